"""Numbers with units, read the way PostgreSQL reads them in postgresql.conf.

A memory or time parameter accepts a plain number in its own unit (``work_mem = 4096`` is
4096 kB) or a number followed by a unit (``4MB``, ``1.5GB``, ``30s``, ``5min``), optionally
with a space in between. Units are case-sensitive, as in PostgreSQL. The result is converted
to the parameter's unit; integer parameters round to the nearest whole number, as the
server does. Integers may also be written in octal (``0600``) or hexadecimal (``0x1F``).
"""

from __future__ import annotations

import math
import re

MEMORY_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1024,
    "MB": 1024**2,
    "GB": 1024**3,
    "TB": 1024**4,
}
TIME_UNITS_US: dict[str, int] = {
    "us": 1,
    "ms": 1000,
    "s": 1000**2,
    "min": 60 * 1000**2,
    "h": 3600 * 1000**2,
    "d": 86400 * 1000**2,
}

_NUMBER_WITH_UNIT = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z]+)?\s*$"
)
_OCTAL_OR_HEX = re.compile(r"^\s*(?P<number>[+-]?(?:0[0-7]+|0[xX][0-9a-fA-F]+))\s*$")
# pg_settings.unit may carry a multiple, such as "8kB" (blocks) or "16MB" (WAL segments).
_PARAMETER_UNIT = re.compile(r"^(?P<multiple>\d*)(?P<unit>[A-Za-z]+)$")


class UnitError(ValueError):
    """A value that is not a number, or whose unit does not fit the parameter."""


def _unit_scale(unit: str) -> tuple[dict[str, int], int]:
    """The unit family of a parameter's unit and the size of one unit in the family's base."""
    match = _PARAMETER_UNIT.match(unit)
    if not match:
        raise UnitError(f"unknown parameter unit {unit!r}")
    multiple = int(match["multiple"] or 1)
    for family in (MEMORY_UNITS, TIME_UNITS_US):
        if match["unit"] in family:
            return family, multiple * family[match["unit"]]
    raise UnitError(f"unknown parameter unit {unit!r}")


def valid_units(unit: str) -> list[str]:
    """The units a value of this parameter may be written in (empty: plain numbers only)."""
    if not unit:
        return []
    family, _ = _unit_scale(unit)
    return list(family)


def parse_number(text: str, unit: str | None, *, integer: bool) -> int | float:
    """Read ``text`` as a number in the parameter's ``unit``; raise UnitError saying why not."""
    based = _OCTAL_OR_HEX.match(text)
    if integer and based:
        # PostgreSQL reads integers with strtol(..., 0): 0600 is octal, 0x1F hexadecimal.
        digits = based["number"]
        return int(digits, 16 if "x" in digits.lower() else 8)
    match = _NUMBER_WITH_UNIT.match(text)
    if not match:
        kind = "a whole number" if integer else "a number"
        with_units = f", optionally with a unit ({', '.join(valid_units(unit))})" if unit else ""
        raise UnitError(f"must be {kind}{with_units}; got {text.strip()!r}")
    number = float(match["number"])
    if not math.isfinite(number):
        raise UnitError(f"is too large; got {text.strip()!r}")
    given = match["unit"]
    if given:
        if not unit:
            raise UnitError(f"takes a plain number without a unit; got {text.strip()!r}")
        family, scale = _unit_scale(unit)
        if given not in family:
            raise UnitError(
                f"unit {given!r} does not fit this parameter; valid units are "
                f"{', '.join(family)} (case-sensitive)"
            )
        number = number * family[given] / scale
    elif integer and not number.is_integer():
        raise UnitError(f"must be a whole number; got {text.strip()!r}")
    if integer:
        return round(number)
    return number
