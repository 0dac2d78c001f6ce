"""The console's roles, as Django groups holding Django permissions.

*reader* sees everything; *settings manager* may also change the inference settings; *admin*
may do everything. Superusers (``createsuperuser``) hold every permission. Each app declares
the permissions of what it guards on its own models (``serverparams.edit_parameters``, ...)
and checks them with ``user.has_perm``; this module only says which role holds which, and
keeps the groups in step with that after every ``migrate`` (and every test flush).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from console.deployments.models import MANAGE_DEPLOYMENTS
from console.inference_settings.models import CHANGE_SETTINGS
from console.jobs.models import MANAGE_JOBS
from serverparams.models import EDIT_PARAMETERS

READER = "reader"
SETTINGS_MANAGER = "settings manager"
ADMIN = "admin"
ROLES: tuple[str, ...] = (READER, SETTINGS_MANAGER, ADMIN)


# What each role may change, as "app_label.codename" permissions.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    READER: (),
    SETTINGS_MANAGER: (CHANGE_SETTINGS,),
    ADMIN: (EDIT_PARAMETERS, MANAGE_DEPLOYMENTS, CHANGE_SETTINGS, MANAGE_JOBS),
}

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
    return user.has_perm(EDIT_PARAMETERS)


def can_change_settings(user: User) -> bool:
    """Inference settings: settings managers and admins."""
    return user.has_perm(CHANGE_SETTINGS)


def can_manage_jobs(user: User) -> bool:
    """Embedding jobs: admins only."""
    return user.has_perm(MANAGE_JOBS)


def role_label(user: User) -> str:
    if is_admin(user):
        return ADMIN
    if SETTINGS_MANAGER in _groups(user):
        return SETTINGS_MANAGER
    return READER


def sync_role_permissions(**_: Any) -> None:
    """Create the role groups and give each exactly the permissions ROLE_PERMISSIONS lists.

    Connected to ``post_migrate`` for every app: a permission that does not exist yet (its
    app has not been migrated) is added by a later call.
    """
    from django.contrib.auth.models import Group, Permission

    for role, names in ROLE_PERMISSIONS.items():
        group, _created = Group.objects.get_or_create(name=role)
        wanted = []
        for name in names:
            app_label, codename = name.split(".", 1)
            wanted += Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            )
        group.permissions.set(wanted)
