"""The console's roles, as Django groups, and the checks views use.

*reader* sees everything; *settings manager* may also change the inference settings; *admin*
may do everything. Superusers (``createsuperuser``) count as admin everywhere. The groups are
created by a data migration.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

READER = "reader"
SETTINGS_MANAGER = "settings manager"
ADMIN = "admin"
ROLES: tuple[str, ...] = (READER, SETTINGS_MANAGER, ADMIN)

User = AbstractBaseUser | AnonymousUser


def _groups(user: User) -> set[str]:
    if not user.is_authenticated:
        return set()
    # Cached on the user object: a page asks several times.
    cached: set[str] | None = getattr(user, "_console_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))  # type: ignore[union-attr]
        user._console_roles = cached  # type: ignore[union-attr]
    return cached


def is_admin(user: User) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or ADMIN in _groups(user)))


def can_edit_parameters(user: User) -> bool:
    """Server parameters: admins only."""
    return is_admin(user)


def can_change_settings(user: User) -> bool:
    """Inference settings: settings managers and admins."""
    return is_admin(user) or SETTINGS_MANAGER in _groups(user)


def role_label(user: User) -> str:
    if is_admin(user):
        return ADMIN
    if SETTINGS_MANAGER in _groups(user):
        return SETTINGS_MANAGER
    return READER
