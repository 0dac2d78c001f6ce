"""The parameter catalog: the managed server's real ``pg_settings``, as the blade shows them.

The whole catalog is read in one query (plus one for the available extensions), so a page
costs the same number of queries however many parameters the server has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from serverparams import policy
from serverparams.machine import unmet_needs
from serverparams.units import UnitError, parse_number

# ALTER SYSTEM writes postgresql.auto.conf; every other configuration file (postgresql.conf as
# initdb wrote it, its includes) is the server's own configuration.
IN_AUTO_CONF = "sourcefile LIKE '%/postgresql.auto.conf'"

# A parameter waiting for a restart shows the value that will take effect (the last entry of
# the configuration files, or the boot value once no file sets it), not the running one, so
# that two people editing it compare against the same value.
#
# A parameter's default is what it has without ALTER SYSTEM's entries, which is what
# ALTER SYSTEM RESET returns it to: the running value while that does not come from
# postgresql.auto.conf (in the server's own canonical form, e.g. "ISO, MDY" for initdb's
# 'iso, mdy'), else the last entry of the other configuration files, else the boot value.
PARAMETERS_QUERY = f"""
WITH file_values AS (
    SELECT DISTINCT ON (lower(name)) lower(name) AS lname, setting
    FROM pg_file_settings
    WHERE name IS NOT NULL
    ORDER BY lower(name), seqno DESC
), configured_values AS (
    SELECT DISTINCT ON (lower(name)) lower(name) AS lname, setting
    FROM pg_file_settings
    WHERE name IS NOT NULL AND NOT {IN_AUTO_CONF}
    ORDER BY lower(name), seqno DESC
)
SELECT s.name, s.setting, s.unit, s.category, s.short_desc, s.extra_desc, s.context,
       s.vartype, s.source, s.min_val, s.max_val, s.enumvals, s.boot_val, s.reset_val,
       s.pending_restart,
       CASE WHEN s.pending_restart THEN COALESCE(f.setting, s.boot_val) END AS pending_value,
       CASE
           WHEN NOT s.pending_restart
                AND (s.source IN ('default', 'override', 'environment variable', 'command line')
                     OR (s.source = 'configuration file' AND NOT {IN_AUTO_CONF}))
           THEN s.setting
           ELSE COALESCE(c.setting, s.boot_val)
       END AS default_value
FROM pg_settings s
LEFT JOIN file_values f ON f.lname = lower(s.name)
LEFT JOIN configured_values c ON c.lname = lower(s.name)
ORDER BY lower(s.name)
"""

# The ways of writing a true boolean, as PostgreSQL reads them (short of unique prefixes).
TRUE_WORDS = frozenset({"on", "true", "yes", "1"})

EXTENSIONS_QUERY = """
SELECT name, default_version, installed_version, comment
FROM pg_available_extensions
ORDER BY name
"""


@dataclass(frozen=True)
class Extension:
    name: str
    default_version: str | None
    installed_version: str | None
    comment: str
    unavailable_reason: str = ""  # why this machine cannot use it; empty when it can


@dataclass(frozen=True)
class Parameter:
    name: str
    setting: str
    unit: str
    category: str
    short_desc: str
    extra_desc: str
    context: str
    vartype: str
    source: str
    min_val: str | None
    max_val: str | None
    enumvals: tuple[str, ...]
    boot_val: str
    reset_val: str
    pending_restart: bool
    pending_value: str | None
    default: str  # what ALTER SYSTEM RESET returns it to (see PARAMETERS_QUERY)
    choices: tuple[str, ...] = field(default=())  # set parameters: the allowed entries

    @property
    def parameter_type(self) -> str:
        if self.name in policy.READ_ONLY_PARAMETERS:
            return policy.READ_ONLY
        return policy.CONTEXT_TYPES.get(self.context, policy.READ_ONLY)

    @property
    def data_type(self) -> str:
        if self.name in policy.SET_PARAMETERS:
            return policy.SET
        return policy.VARTYPE_TYPES.get(self.vartype, "string")

    @property
    def is_read_only(self) -> bool:
        return self.parameter_type == policy.READ_ONLY

    @property
    def is_static(self) -> bool:
        return self.parameter_type == policy.STATIC

    @property
    def value(self) -> str:
        """The value that is (or, after a pending restart, will be) in effect."""
        if self.pending_restart and self.pending_value is not None:
            return self.pending_value
        return self.setting

    @property
    def is_modified(self) -> bool:
        """The value differs from the server's configured default (see ``default``)."""
        if not self.pending_restart and self.source in policy.COMPUTED_SOURCES:
            return False
        return not self.is_default(self.value)

    def is_default(self, value: str) -> bool:
        """``value`` is the default, however it is written (``on``/``true``, ``4MB``/``4096``)."""
        return normalise(self, value) == normalise(self, self.default)

    @property
    def description(self) -> str:
        return " ".join(part for part in (self.short_desc, self.extra_desc) if part)

    @property
    def allowed_values(self) -> str:
        """The allowed values as the blade's column shows them."""
        if self.data_type == "boolean":
            return "on, off"
        if self.data_type == "enumeration":
            return ", ".join(self.enumvals)
        if self.data_type == policy.SET:
            return ", ".join(choice.upper() for choice in self.choices)
        if self.data_type in {"integer", "numeric"} and self.min_val is not None:
            unit = f" {self.unit}" if self.unit else ""
            return f"{self.min_val}-{self.max_val}{unit}"
        return ""

    @property
    def set_members(self) -> list[str]:
        """The entries of a set parameter's value, lower case, in order."""
        return split_list(self.value)

    def matches(self, query: str) -> bool:
        needle = query.strip().lower()
        return not needle or needle in self.name.lower() or needle in self.description.lower()


class ChoiceStatusLike(Protocol):
    text: str
    url: str
    busy: bool


@dataclass(frozen=True)
class Choice:
    """One entry of a set parameter's checklist."""

    name: str
    checked: bool
    reason: str  # why it cannot be ticked on this machine; empty when it can
    status: str = ""  # what is under way for it (a deployment), shown beside it
    status_url: str = ""
    busy: bool = False  # work in progress: shown ticked, not editable until it ends

    @property
    def label(self) -> str:
        return self.name.upper()


def checklist(
    parameter: Parameter,
    extensions: Iterable[Extension],
    statuses: Mapping[str, ChoiceStatusLike] | None = None,
) -> list[Choice]:
    """The checklist of a set parameter; extensions this machine cannot host carry a reason,
    and those with work under way (``statuses``, by name) say so."""
    reasons: dict[str, str] = {}
    if policy.SET_PARAMETERS.get(parameter.name) == policy.EXTENSIONS_SOURCE:
        reasons = {extension.name: extension.unavailable_reason for extension in extensions}
    members = parameter.set_members
    statuses = statuses or {}
    choices = []
    for name in parameter.choices:
        status = statuses.get(name)
        busy = bool(status and status.busy)
        choices.append(
            Choice(
                name=name,
                checked=name in members or busy,
                reason=reasons.get(name, ""),
                status=status.text if status else "",
                status_url=status.url if status else "",
                busy=busy,
            )
        )
    return choices


def split_list(value: str) -> list[str]:
    """A comma-separated parameter value as a list of lower-case entries."""
    return [item.strip().strip('"').lower() for item in value.split(",") if item.strip()]


def normalise(parameter: Parameter, value: str | None) -> object:
    """A value in a form where equal settings compare equal (``on``/``true``, ``1.0``/``1``)."""
    text = (value or "").strip()
    kind = parameter.data_type
    if kind == "boolean":
        return text.lower() in TRUE_WORDS
    if kind in {"integer", "numeric"}:
        # Configuration files may hold "128MB" where pg_settings says 16384 (8kB units).
        try:
            return parse_number(text, parameter.unit or None, integer=kind == "integer")
        except UnitError:
            return text
    if kind == "enumeration":
        return text.lower()
    if kind == policy.SET:
        return tuple(sorted(set(split_list(text))))
    return text


def read_parameters(
    conn: psycopg.Connection, extensions: Iterable[Extension] = ()
) -> list[Parameter]:
    """Every parameter of the server, in name order, in one query."""
    extension_names = tuple(extension.name for extension in extensions)
    rows = conn.execute(PARAMETERS_QUERY).fetchall()
    parameters = []
    for row in rows:
        (name, setting, unit, category, short_desc, extra_desc, context, vartype, source) = row[:9]
        (min_val, max_val, enumvals, boot_val, reset_val, pending_restart) = row[9:15]
        (pending_value, default) = row[15:]
        source_of_choices = policy.SET_PARAMETERS.get(name)
        if source_of_choices == policy.EXTENSIONS_SOURCE:
            choices = extension_names
        elif isinstance(source_of_choices, tuple):
            choices = source_of_choices
        else:
            choices = ()
        parameters.append(
            Parameter(
                name=name,
                setting=setting or "",
                unit=unit or "",
                category=category or "",
                short_desc=short_desc or "",
                extra_desc=extra_desc or "",
                context=context,
                vartype=vartype,
                source=source or "",
                min_val=min_val,
                max_val=max_val,
                enumvals=tuple(enumvals or ()),
                boot_val=boot_val or "",
                reset_val=reset_val or "",
                pending_restart=bool(pending_restart),
                pending_value=pending_value,
                default=default or "",
                choices=choices,
            )
        )
    return parameters


def read_extensions(conn: psycopg.Connection) -> list[Extension]:
    """The server's available extensions, each with the reason this machine cannot use it."""
    return [
        Extension(
            name=name,
            default_version=default_version,
            installed_version=installed_version,
            comment=comment or "",
            unavailable_reason=unmet_needs(name),
        )
        for name, default_version, installed_version, comment in conn.execute(
            EXTENSIONS_QUERY
        ).fetchall()
    ]


@dataclass(frozen=True)
class Catalog:
    parameters: list[Parameter]
    extensions: list[Extension]

    def by_name(self) -> dict[str, Parameter]:
        """Parameters keyed by lower-case name (PostgreSQL's names are case-insensitive)."""
        return {parameter.name.lower(): parameter for parameter in self.parameters}


def read_catalog(conn: psycopg.Connection) -> Catalog:
    extensions = read_extensions(conn)
    return Catalog(parameters=read_parameters(conn, extensions), extensions=extensions)
