"""What enabling or disabling an extension sets off beyond the allowlist, declared by the
apps that do it.

The blade knows nothing of what an extension needs. An app that provisions something when an
extension of ``azure.extensions`` is ticked registers an ``ExtensionHook`` (in its
``AppConfig.ready``). On Save the blade then

1. asks the user to confirm, in one dialog made of each hook's section;
2. leaves a newly ticked hooked extension out of the value it writes (the hook's own work adds
   it to the allowlist once what it needs is ready), and saves the rest all or nothing;
3. hands over to the hook (``enable`` / ``disable``), whose outcome the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.http import HttpRequest

from serverparams import policy
from serverparams.catalog import split_list
from serverparams.validation import Edit


@dataclass(frozen=True)
class Outcome:
    """What a hook did, for the blade's messages."""

    message: str
    url: str = ""
    link_text: str = ""
    ok: bool = True


@dataclass(frozen=True)
class ChoiceStatus:
    """What the checklist shows beside a hooked extension (e.g. a deployment in progress)."""

    text: str
    url: str = ""
    busy: bool = False  # work in progress: the box shows ticked and cannot be changed


class ExtensionHook(Protocol):
    extension: str  # lower case, as in pg_available_extensions
    enable_template: str  # the dialog's section when the extension is newly ticked
    disable_template: str  # ... and when it is unticked

    def enable_context(self, request: HttpRequest) -> dict[str, Any]: ...

    def disable_context(self, request: HttpRequest) -> dict[str, Any]: ...

    def check_enable(self, request: HttpRequest) -> dict[str, str]:
        """Errors in the dialog's choices, by field; empty when enabling can start."""
        ...

    def enable(self, request: HttpRequest) -> Outcome: ...

    def disable(self, request: HttpRequest) -> Outcome: ...

    def status(self) -> ChoiceStatus | None: ...


_HOOKS: dict[str, ExtensionHook] = {}


def register(hook: ExtensionHook) -> None:
    _HOOKS[hook.extension.lower()] = hook


def hook_for(extension: str) -> ExtensionHook | None:
    return _HOOKS.get(extension.lower())


def statuses() -> dict[str, ChoiceStatus]:
    """The checklist's status of every hooked extension that has one."""
    found = {}
    for name, hook in _HOOKS.items():
        status = hook.status()
        if status is not None:
            found[name] = status
    return found


@dataclass(frozen=True)
class HookedChange:
    hook: ExtensionHook
    enable: bool  # newly ticked (True) or unticked (False)
    parameter: str

    @property
    def template(self) -> str:
        return self.hook.enable_template if self.enable else self.hook.disable_template

    def context(self, request: HttpRequest) -> dict[str, Any]:
        if self.enable:
            return self.hook.enable_context(request)
        return self.hook.disable_context(request)


def _is_allowlist(name: str) -> bool:
    return policy.SET_PARAMETERS.get(name.strip().lower()) == policy.EXTENSIONS_SOURCE


def hooked_changes(edits: list[Edit]) -> list[HookedChange]:
    """The hooked extensions that ``edits`` tick or untick, against the value each editor was
    showing (``base``). An edit without a base counts every hooked entry it names as newly
    ticked, so that no way of posting skips the confirmation and the hook's work."""
    changes = []
    for edit in edits:
        if not _is_allowlist(edit.name):
            continue
        before = split_list(edit.base or "")
        after = split_list(edit.value)
        for name in dict.fromkeys([*after, *before]):
            hook = hook_for(name)
            if hook is None or (name in after) == (name in before):
                continue
            changes.append(HookedChange(hook=hook, enable=name in after, parameter=edit.name))
    return changes


def without_enabled(edits: list[Edit], changes: list[HookedChange]) -> list[Edit]:
    """``edits`` less the newly ticked hooked extensions (their hooks add them when ready);
    an edit left with nothing to change is dropped."""
    enabled = {change.hook.extension for change in changes if change.enable}
    kept = []
    for edit in edits:
        if _is_allowlist(edit.name) and enabled:
            members = [m for m in split_list(edit.value) if m not in enabled]
            if edit.base is not None and set(members) == set(split_list(edit.base)):
                continue
            edit = Edit(name=edit.name, value=",".join(members), base=edit.base)
        kept.append(edit)
    return kept
