"""Validation of parameter edits against the server's own catalog, before anything is applied.

Every edit is checked: the name against ``pg_settings`` (unknown and read-only parameters are
refused), the value against the parameter's data type, range (with units, see ``units``),
enumeration values or set entries. The result is the value in the text form PostgreSQL
stores, to be passed to ``ALTER SYSTEM`` as a literal.

A value equal to the parameter's default (the server's own configuration, see
``Parameter.default``) is a reset, however it is written: it is applied with
``ALTER SYSTEM RESET``, so that the parameter follows the configuration files again rather than
pinning a copy of their value. The per-row "Reset to default", "Reset all to default" and a
value typed by hand all end the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serverparams import policy
from serverparams.catalog import TRUE_WORDS, Catalog, Extension, Parameter, normalise, split_list
from serverparams.units import UnitError, parse_number

_FALSE = {"off", "false", "no", "0"}
_MAX_STRING = 4096


@dataclass(frozen=True)
class Edit:
    """One requested change: the new value, and the value the editor was showing (``base``)."""

    name: str
    value: str
    base: str | None = None


class InvalidValue(ValueError):
    """The message says what was wrong with the value and what the parameter accepts."""


def clean_value(parameter: Parameter, raw: str, extensions: list[Extension]) -> str:
    """The value PostgreSQL should store for ``raw``, or InvalidValue saying why not."""
    text = raw.strip()
    if "\x00" in raw or "\n" in raw or "\r" in raw:
        raise InvalidValue("must be on one line, without control characters")
    if len(text) > _MAX_STRING:
        raise InvalidValue(f"is too long (at most {_MAX_STRING} characters)")
    kind = parameter.data_type
    if kind == "boolean":
        if text.lower() in TRUE_WORDS:
            return "on"
        if text.lower() in _FALSE:
            return "off"
        raise InvalidValue(f"must be on or off; got {text!r}")
    if kind == "enumeration":
        for allowed in parameter.enumvals:
            if text.lower() == allowed.lower():
                return allowed
        raise InvalidValue(f"must be one of {', '.join(parameter.enumvals)}; got {text!r}")
    if kind in {"integer", "numeric"}:
        return _clean_number(parameter, text)
    if kind == policy.SET:
        return _clean_set(parameter, text, extensions)
    return text


def _clean_number(parameter: Parameter, text: str) -> str:
    integer = parameter.data_type == "integer"
    try:
        number = parse_number(text, parameter.unit or None, integer=integer)
    except UnitError as exc:
        raise InvalidValue(str(exc)) from None
    unit = f" {parameter.unit}" if parameter.unit else ""
    low = float(parameter.min_val) if parameter.min_val is not None else None
    high = float(parameter.max_val) if parameter.max_val is not None else None
    if (low is not None and number < low) or (high is not None and number > high):
        converted = f" (= {number}{unit})" if text != str(number) else ""
        raise InvalidValue(
            f"must be between {parameter.min_val} and {parameter.max_val}{unit}; "
            f"got {text}{converted}"
        )
    return str(number) if integer else repr(float(number)).removesuffix(".0")


def _clean_set(parameter: Parameter, text: str, extensions: list[Extension]) -> str:
    entries = split_list(text)
    allowed = {choice.lower() for choice in parameter.choices}
    unknown = [entry for entry in entries if entry not in allowed]
    if unknown:
        listed = ", ".join(entry.upper() for entry in unknown)
        what = (
            "available extensions of this server"
            if policy.SET_PARAMETERS.get(parameter.name) == policy.EXTENSIONS_SOURCE
            else "allowed values"
        )
        raise InvalidValue(f"{listed} not among the {what}: {parameter.allowed_values}")
    current = set(parameter.set_members)
    reasons = {ext.name: ext.unavailable_reason for ext in extensions if ext.unavailable_reason}
    # An extension already on the list stays allowed; only adding one is refused.
    for entry in entries:
        if entry in reasons and entry not in current:
            raise InvalidValue(
                f"{entry.upper()} cannot be enabled on this machine: {reasons[entry]}"
            )
    return ",".join(dict.fromkeys(entries))


@dataclass
class Checked:
    """The outcome of checking a batch of edits: clean values, or errors keyed by name."""

    values: dict[str, str]  # canonical parameter name -> value to store
    errors: dict[str, str]  # the name as submitted -> message
    parameters: dict[str, Parameter]  # canonical name -> parameter, for the edited ones
    conflicts: list[str] = field(default_factory=list)  # changed by someone since read
    resets: list[str] = field(default_factory=list)  # canonical names set to their default


def check_edits(edits: list[Edit], catalog: Catalog, *, check_base: bool = True) -> Checked:
    """Validate every edit; with ``check_base``, refuse rows changed since they were read."""
    known = catalog.by_name()
    checked = Checked(values={}, errors={}, parameters={})
    for edit in edits:
        parameter = known.get(edit.name.strip().lower())
        if parameter is None:
            checked.errors[edit.name] = (
                f"{edit.name!r} is not a parameter of this server; check the name in the All tab"
            )
            continue
        if parameter.is_read_only:
            checked.errors[parameter.name] = (
                "is read-only here: the server or the console manages it, so it cannot be "
                "changed from this blade"
            )
            continue
        if (
            check_base
            and edit.base is not None
            and normalise(parameter, edit.base) != normalise(parameter, parameter.value)
        ):
            checked.errors[parameter.name] = (
                f"was changed by someone else since you loaded the page: it is now "
                f"{parameter.value!r}. Refresh to see the newer value, then edit again"
            )
            checked.conflicts.append(parameter.name)
            continue
        if parameter.is_default(edit.value):
            # The server's files already hold this value; nothing of the user's is stored.
            checked.values[parameter.name] = parameter.default
            checked.resets.append(parameter.name)
            checked.parameters[parameter.name] = parameter
            continue
        try:
            checked.values[parameter.name] = clean_value(parameter, edit.value, catalog.extensions)
        except InvalidValue as exc:
            checked.errors[parameter.name] = str(exc)
            continue
        checked.parameters[parameter.name] = parameter
    return checked
