"""The sidecar's settings as the console sees them: read the schema and the values, apply a
change, record who changed what.

The schema comes from the running sidecar (``GET /settings?describe=1``), where the settings
are declared once; the console keeps no copy of it. The sidecar validates every change again
and applies it all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction

from console.inference_settings.models import SettingChange
from console.overview import RENDER_TIMEOUT_S
from console.sidecar import sidecar_client
from inference.client import InferenceError, InferenceUnavailable, ModelFacts

# A change may rebuild the ONNX Runtime session of every loaded model before the sidecar
# answers, which can take longer than a read; reads keep the page's short timeout.
APPLY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Spec:
    """One entry of the sidecar's settings schema."""

    key: str
    # "int" | "float" | "bool" | "choice" | "uri" (a registered model, or "" for none);
    # anything else is edited as text
    kind: str
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""

    @classmethod
    def from_schema(cls, entry: Mapping[str, Any]) -> Spec:
        return cls(
            key=str(entry["key"]),
            kind=str(entry.get("type") or "str"),
            default=entry.get("default"),
            help=str(entry.get("help") or ""),
            minimum=entry.get("min"),
            maximum=entry.get("max"),
            choices=tuple(str(c) for c in entry.get("choices") or ()),
            unit=str(entry.get("unit") or ""),
        )

    def with_unit(self, text: str) -> str:
        return f"{text} {self.unit}" if self.unit else text

    @property
    def range_text(self) -> str:
        """The allowed values, for the hint beside the field ("" when anything goes). Hints
        leave the unit to the field, where it shows once."""
        if self.choices:
            return ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{hint_text(self.minimum)} to {hint_text(self.maximum)}"
        if self.minimum is not None:
            return f"at least {hint_text(self.minimum)}"
        if self.maximum is not None:
            return f"at most {hint_text(self.maximum)}"
        return ""


def value_text(value: Any) -> str:
    """A value as the audit trail and the API's users read it: ``true``, ``64``, ``2.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def hint_text(value: Any) -> str:
    """``value_text`` with thousands separators, for long numbers in hints."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return value_text(value)


@dataclass(frozen=True)
class Snapshot:
    specs: list[Spec]
    values: dict[str, Any]
    # How the settings resolve on the sidecar's machine ("1 session x 2 threads on 2 cores");
    # "" when the sidecar does not say.
    layout: str = ""
    # The registered models, what a "uri" setting may name.
    models: tuple[ModelFacts, ...] = ()


def read() -> Snapshot:
    """The schema, the current values, the layout they give and the registered models; raises
    InferenceError (InferenceUnavailable when the sidecar cannot be reached)."""
    with sidecar_client(RENDER_TIMEOUT_S) as client:
        schema = client.settings_schema()
        values = client.settings()
        layout = _layout(client.health())
        models = tuple(client.model_facts())
    return Snapshot(
        specs=[Spec.from_schema(entry) for entry in schema],
        values=values,
        layout=layout,
        models=models,
    )


def _layout(health: Mapping[str, Any]) -> str:
    layout = health.get("layout")
    return str(layout.get("description") or "") if isinstance(layout, Mapping) else ""


@dataclass
class SaveResult:
    values: dict[str, Any]  # as the sidecar reports them after the save
    changes: list[SettingChange] = field(default_factory=list)
    # Why nothing was applied, by key ("" for a reason that belongs to no one setting).
    errors: dict[str, str] = field(default_factory=dict)
    # Keys someone else changed since the form was read: nothing was applied.
    conflicts: dict[str, Any] = field(default_factory=dict)
    # The sidecar did not answer the change in time; ``values`` say what it holds now.
    unconfirmed: bool = False


def refusal_by_key(message: str, keys: list[str]) -> dict[str, str]:
    """Split the sidecar's refusal ("settings not changed: a: why; b: why") by setting.

    Parts that name no known key stay together under "".
    """
    found: dict[str, str] = {}
    rest: list[str] = []
    text = message.removeprefix("settings not changed: ")
    for part in text.split("; "):
        key, sep, why = part.partition(": ")
        if sep and key in keys:
            found[key] = why
        elif found and not sep:
            # A "; " inside one key's reason.
            last = next(reversed(found))
            found[last] += f"; {part}"
        else:
            rest.append(part)
    if rest:
        found[""] = "; ".join(rest) if found else message
    return found


def save(
    updates: Mapping[str, Any],
    seen: Mapping[str, Any],
    before: Mapping[str, Any],
    user: AbstractBaseUser | AnonymousUser,
) -> SaveResult:
    """Apply ``updates`` through the sidecar, all or nothing, and record each value changed.

    ``seen`` holds the values the form showed for the updated keys, ``before`` the values just
    read: a key whose value moved in between was changed by someone else, and nothing is
    applied. Raises InferenceUnavailable when the sidecar cannot be reached (before the change,
    or to read it back).
    """
    conflicts = {
        key: before.get(key) for key in updates if key in seen and seen[key] != before.get(key)
    }
    if conflicts:
        return SaveResult(values=dict(before), conflicts=conflicts)
    if not updates:
        return SaveResult(values=dict(before))
    unconfirmed = False
    with sidecar_client(APPLY_TIMEOUT_S) as client:
        try:
            client.update_settings(dict(updates))
        except InferenceUnavailable:
            # It may have been applied all the same: what the sidecar reports next tells.
            unconfirmed = True
        except InferenceError as exc:
            return SaveResult(
                values=dict(before), errors=refusal_by_key(exc.message, list(updates))
            )
    with sidecar_client(RENDER_TIMEOUT_S) as client:
        after = client.settings()
    return SaveResult(
        values=after, changes=_record(updates, before, after, user), unconfirmed=unconfirmed
    )


def _record(
    updates: Mapping[str, Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    user: AbstractBaseUser | AnonymousUser,
) -> list[SettingChange]:
    """One row per updated key whose value the sidecar now reports as changed."""
    signed_in = getattr(user, "is_authenticated", False)
    with transaction.atomic():
        return [
            SettingChange.objects.create(
                user=user if signed_in else None,
                username=user.get_username() or "anonymous",
                key=key,
                old_value=value_text(before.get(key)),
                new_value=value_text(after.get(key)),
            )
            for key in updates
            if before.get(key) != after.get(key)
        ]
