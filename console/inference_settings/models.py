"""The audit trail of inference settings changed from the console."""

from __future__ import annotations

from django.conf import settings
from django.db import models

CHANGE_SETTINGS = "inference_settings.change_inference_settings"


class SettingChange(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept beside the foreign key so that history survives the user's deletion.
    username = models.CharField(max_length=150)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    key = models.CharField(max_length=100, db_index=True)
    old_value = models.TextField(blank=True)
    new_value = models.TextField(blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        permissions = [("change_inference_settings", "Can change the inference settings")]

    def __str__(self) -> str:
        return f"{self.key}: {self.old_value!r} -> {self.new_value!r} by {self.username}"
