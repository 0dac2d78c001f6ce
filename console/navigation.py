"""The portal's left resource menu, declared as data, and the notifications bell."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from console.roles import role_label
from serverparams.models import ParameterChange


@dataclass(frozen=True)
class MenuItem:
    key: str
    label: str
    url: str


# Sections whose blades are not built yet; they show a "coming soon" panel.
COMING_SOON: dict[str, str] = {
    "deployments": "Deployments",
    "models": "Models",
    "settings": "Settings",
    "playground": "Playground",
}


def menu() -> list[MenuItem]:
    items = [
        MenuItem("overview", "Overview", reverse("overview")),
        MenuItem("parameters", "Server parameters", reverse("serverparams:blade")),
    ]
    items += [
        MenuItem(key, label, reverse("coming_soon", args=[key]))
        for key, label in COMING_SOON.items()
    ]
    return items


@dataclass(frozen=True)
class Notification:
    title: str
    detail: str
    when: object


def notifications() -> list[Notification]:
    """Recent events worth a look: parameter changes of the last day."""
    since = timezone.now() - timedelta(days=1)
    changes = ParameterChange.objects.filter(changed_at__gte=since)[:5]
    return [
        Notification(
            title=f"{change.parameter} changed",
            detail=f"{change.old_value} → {change.new_value} ({change.get_status_display()}) "
            f"by {change.username}",
            when=change.changed_at,
        )
        for change in changes
    ]


def portal(request: HttpRequest) -> dict[str, object]:
    """Context processor: the shell's menu, the current section and the bell."""
    if not request.user.is_authenticated:
        return {}
    path = request.path
    items = menu()
    current = next(
        (item.key for item in items if item.url != "/" and path.startswith(item.url)),
        "overview" if path == "/" else "",
    )
    return {
        "menu_items": items,
        "current_section": current,
        "notifications": notifications(),
        "user_role": role_label(request.user),
    }
