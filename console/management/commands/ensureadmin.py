"""First run: create an ``admin`` user with a random password if the console has no user."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the first console user 'admin' with a random password (written to "
        "VAR_DIR/admin-password.txt) when no user exists yet."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        if user_model.objects.exists():
            self.stdout.write("Console users exist already; no admin created.")
            return
        password = secrets.token_urlsafe(18)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        # Mode 0600 before the password is written, also when an older file is overwritten:
        # the password is never readable by others.
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        user_model.objects.create_superuser("admin", email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                "Created the console user 'admin'. Sign in with user name admin and the "
                f"password in {password_file} (then change it under the user menu or with "
                "`manage.py changepassword admin`)."
            )
        )
