# The state of a job whose row is saved before its triggers and tables are created.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_batch_size_256"),
    ]

    operations = [
        migrations.AlterField(
            model_name="embeddingjob",
            name="state",
            field=models.CharField(
                choices=[
                    ("creating", "Creating"),
                    ("active", "Active"),
                    ("paused", "Paused"),
                    ("deleted", "Deleted"),
                ],
                default="active",
                max_length=10,
            ),
        ),
    ]
