"""Validation of edits against the real server's catalog, before anything is applied."""

from __future__ import annotations

import psycopg
import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serverparams.apply import auto_conf, save_changes
from serverparams.catalog import Catalog, read_catalog
from serverparams.server import ManagedServer
from serverparams.units import UnitError, parse_number
from serverparams.validation import Edit, check_edits
from tests.console.servers import restore_auto_conf


@pytest.fixture
def catalog(pg: psycopg.Connection) -> Catalog:
    return read_catalog(pg)


def one(catalog: Catalog, name: str, value: str) -> tuple[str | None, str | None]:
    """(clean value, error) for one edit."""
    checked = check_edits([Edit(name, value)], catalog)
    error = next(iter(checked.errors.values()), None)
    return next(iter(checked.values.values()), None), error


@pytest.mark.parametrize(
    ("text", "unit", "integer", "expected"),
    [
        ("4096", "kB", True, 4096),
        ("4MB", "kB", True, 4096),
        ("4 MB", "kB", True, 4096),
        ("1.5GB", "kB", True, 1572864),
        ("1GB", "8kB", True, 131072),
        ("30s", "ms", True, 30000),
        ("5min", "s", True, 300),
        ("1500ms", "s", True, 2),  # rounds to the nearest whole unit, like PostgreSQL
        ("2ms", "ms", False, 2.0),
        ("0.25", "", False, 0.25),
        ("0600", "", True, 384),  # octal, as PostgreSQL reads it
        ("0x1F", "", True, 31),
    ],
)
def test_numbers_with_units_convert_like_postgresql(
    text: str, unit: str, integer: bool, expected: float
) -> None:
    assert parse_number(text, unit or None, integer=integer) == expected


@pytest.mark.parametrize(
    ("text", "unit", "message"),
    [
        ("4mb", "kB", "valid units are B, kB, MB, GB, TB"),  # units are case-sensitive
        ("4s", "kB", "does not fit"),
        ("10MB", None, "without a unit"),
        ("lots", "kB", "must be a whole number"),
        ("1.5", None, "whole number"),
        ("1e999", None, "too large"),
    ],
)
def test_bad_numbers_are_refused_with_a_reason(text: str, unit: str | None, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        parse_number(text, unit, integer=True)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("enable_seqscan", "OFF", "off"),
        ("enable_seqscan", "true", "on"),
        ("log_statement", "ALL", "all"),
        ("work_mem", "8MB", "8192"),
        ("work_mem", "65536", "65536"),
        ("statement_timeout", "30s", "30000"),
        ("random_page_cost", "1.1", "1.1"),
        ("random_page_cost", "4", "4"),
        ("search_path", "app, public", "app, public"),
        ("azure.extensions", "VECTOR", "vector"),
        ("azure.extensions", "vector, AZURE_LOCAL_AI, vector", "vector,azure_local_ai"),
        ("azure.extensions", "", ""),
        ("log_destination", "stderr,CSVLOG", "stderr,csvlog"),
        ("TIMEZONE", "UTC", "UTC"),  # names are case-insensitive, as in PostgreSQL
        ("log_file_mode", "0640", "416"),
    ],
)
def test_valid_values_are_cleaned(catalog: Catalog, name: str, value: str, expected: str) -> None:
    assert one(catalog, name, value) == (expected, None)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("enable_seqscan", "maybe", "must be on or off"),
        ("log_statement", "some", "must be one of none, ddl, mod, all"),
        ("work_mem", "32", "must be between 64 and 2147483647 kB; got 32"),
        ("work_mem", "3TB", "must be between 64 and 2147483647 kB; got 3TB (= 3221225472 kB)"),
        ("work_mem", "4 apples", "valid units"),
        ("work_mem", "4MB'; DROP TABLE x; --", "must be a whole number"),
        ("random_page_cost", "-1", "must be between 0 and"),
        ("random_page_cost", "cheap", "must be a number"),
        ("azure.extensions", "vector,no_such_extension", "NO_SUCH_EXTENSION not among"),
        ("azure.extensions", "vector'); DROP TABLE x; --", "not among"),
        ("log_destination", "stderr,eventlog", "EVENTLOG not among the allowed values"),
        ("search_path", "public\nSET x", "on one line"),
        ("port", "6543", "read-only"),
        ("block_size", "16384", "read-only"),
        ("shared_preload_libraries", "", "read-only"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(
    catalog: Catalog, name: str, value: str, message: str
) -> None:
    clean, error = one(catalog, name, value)
    assert clean is None
    assert error is not None and message in error


@pytest.mark.parametrize(
    "name",
    [
        "work_mem'; DROP TABLE x; --",
        '"work_mem"',
        "work_mem; SELECT 1",
        "no_such_parameter",
        "",
    ],
)
def test_names_must_be_parameters_of_the_server(catalog: Catalog, name: str) -> None:
    checked = check_edits([Edit(name, "1")], catalog)
    assert checked.values == {}
    assert "is not a parameter of this server" in checked.errors[name]


def test_an_edit_based_on_an_old_value_is_refused(catalog: Catalog) -> None:
    checked = check_edits([Edit("work_mem", "8MB", base="2048")], catalog)
    assert checked.values == {}
    assert "changed by someone else" in checked.errors["work_mem"]
    assert "'4096'" in checked.errors["work_mem"]
    # The same base written in another form is not a conflict.
    assert check_edits([Edit("enable_seqscan", "off", base="ON")], catalog).errors == {}


def test_one_bad_edit_reports_all_errors_at_once(catalog: Catalog) -> None:
    checked = check_edits(
        [Edit("work_mem", "1"), Edit("enable_seqscan", "off"), Edit("port", "1")], catalog
    )
    assert set(checked.errors) == {"work_mem", "port"}
    assert checked.values == {"enable_seqscan": "off"}


# -- any text, against the server itself ------------------------------------------------------

VALUES = (
    st.text(max_size=30)
    | st.from_regex(r"\A-?[0-9]{1,12}(\.[0-9]{1,4})?\s?(B|kB|MB|GB|TB|us|ms|s|min|h|d)?\Z")
    | st.sampled_from(["on", "off", "true", "0x1F", "0600", "1e3", "NaN", "-inf", "\x00", "a,b"])
    | st.just("x" * 5000)
)


@pytest.mark.parametrize("vartype", ["integer", "real", "bool", "enum", "string"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_value_is_saved_whole_or_refused_with_nothing_applied(
    server: ManagedServer, pg: psycopg.Connection, db: None, vartype: str, data: st.DataObject
) -> None:
    """Whatever is typed for a parameter that takes effect on reload, the save either applies
    it, as the server then shows, or says why not and leaves postgresql.auto.conf as it was:
    what the blade's own checks miss (a check hook's rule, free text), the server refuses."""
    catalog = read_catalog(pg)
    changeable = [
        p
        for p in catalog.parameters
        if p.vartype == vartype and p.context in ("user", "superuser", "sighup")
        and not p.is_read_only
    ]  # fmt: skip
    parameter = data.draw(st.sampled_from(changeable))
    value = data.draw(VALUES)
    user = User.objects.get_or_create(username="fuzz", defaults={"is_superuser": True})[0]
    before = auto_conf(pg)
    try:
        result = save_changes([Edit(parameter.name, value)], user, check_base=False)
        if result.errors or result.failed:
            message = next(iter({**result.errors, **result.failed}.values()))
            assert message.strip()
            assert auto_conf(pg) == before
        else:
            assert result.applied == [parameter.name] or parameter.name in result.applied
    finally:
        restore_auto_conf(pg, before)
