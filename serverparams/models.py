"""The audit trail of parameter changes made from the console."""

from __future__ import annotations

from django.conf import settings
from django.db import models

# Who may change server parameters (the console gives it to its admin role).
EDIT_PARAMETERS = "serverparams.edit_parameters"


class ParameterChange(models.Model):
    class Status(models.TextChoices):
        APPLIED = "applied", "Applied"
        PENDING_RESTART = "pending_restart", "Pending restart"
        RESTARTED = "restarted", "Applied after restart"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept beside the foreign key so that history survives the user's deletion.
    username = models.CharField(max_length=150)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    parameter = models.CharField(max_length=200, db_index=True)
    old_value = models.TextField(blank=True)
    new_value = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)

    class Meta:
        ordering = ["-changed_at", "-id"]
        permissions = [("edit_parameters", "Can change server parameters")]

    def __str__(self) -> str:
        return f"{self.parameter}: {self.old_value!r} -> {self.new_value!r} by {self.username}"
