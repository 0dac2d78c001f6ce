"""The parameter catalog read from the real managed server's pg_settings."""

from __future__ import annotations

import psycopg
import pytest

from serverparams import policy
from serverparams.apply import auto_conf
from serverparams.catalog import Catalog, read_catalog
from serverparams.server import ManagedServer


class CountingConnection:
    """Counts the statements sent, to check the catalog's query budget."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.statements = 0

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements += 1
        return self.conn.execute(*args, **kwargs)


@pytest.fixture
def catalog(pg: psycopg.Connection) -> Catalog:
    return read_catalog(pg)


def test_catalog_reads_all_parameters_in_two_queries(pg: psycopg.Connection) -> None:
    counting = CountingConnection(pg)
    catalog = read_catalog(counting)  # type: ignore[arg-type]
    assert counting.statements == 2  # pg_settings (with pending values) + extensions
    (count,) = pg.execute("SELECT count(*) FROM pg_settings").fetchone()  # type: ignore[misc]
    assert len(catalog.parameters) == count


@pytest.mark.parametrize(
    ("name", "data_type", "parameter_type"),
    [
        ("enable_seqscan", "boolean", "Dynamic"),  # bool, user
        ("log_statement", "enumeration", "Dynamic"),  # enum, superuser
        ("work_mem", "integer", "Dynamic"),  # integer, user
        ("random_page_cost", "numeric", "Dynamic"),  # real, user
        ("search_path", "string", "Dynamic"),  # string, user
        ("azure.extensions", "set", "Dynamic"),  # list-valued, sighup
        ("log_destination", "set", "Dynamic"),
        ("max_connections", "integer", "Static"),  # postmaster
        ("wal_level", "enumeration", "Static"),
        ("checkpoint_timeout", "integer", "Dynamic"),  # sighup
        ("log_connections", "boolean", "Dynamic"),  # superuser-backend
        ("post_auth_delay", "integer", "Dynamic"),  # backend
        ("block_size", "integer", "Read-only"),  # internal
        ("server_version", "string", "Read-only"),  # internal
        ("port", "integer", "Read-only"),  # policy: the console manages it
        ("shared_preload_libraries", "string", "Read-only"),
        ("data_directory", "string", "Read-only"),
        ("azure_local_ai.service_url", "string", "Read-only"),
    ],
)
def test_parameter_maps_to_portal_types(
    catalog: Catalog, name: str, data_type: str, parameter_type: str
) -> None:
    parameter = catalog.by_name()[name.lower()]
    assert parameter.data_type == data_type
    assert parameter.parameter_type == parameter_type


def test_every_context_maps_to_a_parameter_type(catalog: Catalog) -> None:
    contexts = {p.context for p in catalog.parameters}
    assert contexts <= set(policy.CONTEXT_TYPES), contexts - set(policy.CONTEXT_TYPES)
    for parameter in catalog.parameters:
        if parameter.context == "internal" or parameter.name in policy.READ_ONLY_PARAMETERS:
            assert parameter.is_read_only, parameter.name
        elif parameter.context == "postmaster":
            assert parameter.is_static, parameter.name


def test_allowed_values_carry_range_unit_and_choices(catalog: Catalog) -> None:
    by_name = catalog.by_name()
    assert by_name["work_mem"].allowed_values == "64-2147483647 kB"
    assert by_name["work_mem"].unit == "kB"
    assert "all" in by_name["log_statement"].allowed_values.split(", ")
    assert by_name["enable_seqscan"].allowed_values == "on, off"
    assert by_name["work_mem"].boot_val == "4096"
    assert by_name["work_mem"].short_desc in by_name["work_mem"].description


def test_extensions_are_the_choices_of_azure_extensions(catalog: Catalog) -> None:
    names = [extension.name for extension in catalog.extensions]
    assert {"vector", "azure_local_ai", "plpgsql"} <= set(names)
    allowlist = catalog.by_name()["azure.extensions"]
    assert set(allowlist.choices) == set(names)
    assert "VECTOR" in allowlist.allowed_values.split(", ")


def test_modified_compares_normalised_values(pg: psycopg.Connection, server: ManagedServer) -> None:
    pg.execute("ALTER SYSTEM SET work_mem = '8MB'")
    pg.execute("ALTER SYSTEM SET log_file_mode = 384")
    pg.execute("SELECT pg_reload_conf()")
    with server.connect() as fresh:
        by_name = read_catalog(fresh).by_name()
    assert by_name["work_mem"].value == "8192"
    assert by_name["work_mem"].is_modified
    # Same value as the default written differently is not "modified" (0600 is octal 384: set
    # by ALTER SYSTEM, compared with the boot value as no other file sets it),
    # nor is a value the server computed itself (client_encoding from the database).
    assert not by_name["enable_seqscan"].is_modified
    assert by_name["log_file_mode"].setting == "0600" and by_name["log_file_mode"].default == "384"
    assert not by_name["log_file_mode"].is_modified
    assert by_name["client_encoding"].setting != by_name["client_encoding"].boot_val
    assert not by_name["client_encoding"].is_modified


def test_pending_restart_shows_the_value_that_will_take_effect(
    pg: psycopg.Connection, server: ManagedServer
) -> None:
    (running,) = pg.execute("SHOW max_connections").fetchone()  # type: ignore[misc]
    pg.execute(f"ALTER SYSTEM SET max_connections = {int(running) + 7}")
    pg.execute("SELECT pg_reload_conf()")
    with server.connect() as fresh:
        parameter = read_catalog(fresh).by_name()["max_connections"]
    assert parameter.pending_restart
    assert parameter.setting == running
    assert parameter.value == str(int(running) + 7)


def test_defaults_are_the_servers_own_configuration(
    pg: psycopg.Connection, catalog: Catalog
) -> None:
    by_name = catalog.by_name()
    # initdb's postgresql.conf (and the console's included managed.conf), not the boot values.
    assert by_name["lc_messages"].default == "C.UTF-8" and by_name["lc_messages"].boot_val == ""
    assert by_name["timezone"].default == by_name["timezone"].setting != "GMT"
    assert by_name["datestyle"].default == "ISO, MDY"  # the server's form of 'iso, mdy'
    assert by_name["default_text_search_config"].default == "pg_catalog.english"
    assert by_name["shared_preload_libraries"].default == "azure_local_ai"
    # No file sets work_mem: its default is the boot value.
    assert by_name["work_mem"].default == by_name["work_mem"].boot_val == "4096"
    # Only what ALTER SYSTEM wrote can differ from the default.
    modified = {p.name.lower() for p in catalog.parameters if p.is_modified}
    assert modified <= set(auto_conf(pg))


def test_a_parameter_also_set_by_alter_system_defaults_to_the_configuration_file(
    pg: psycopg.Connection, server: ManagedServer
) -> None:
    pg.execute("ALTER SYSTEM SET lc_monetary = 'C'")
    pg.execute("ALTER SYSTEM SET datestyle = 'SQL, DMY'")
    pg.execute("SELECT pg_reload_conf()")
    with server.connect() as fresh:
        by_name = read_catalog(fresh).by_name()
    assert by_name["lc_monetary"].value == "C" and by_name["lc_monetary"].default == "C.UTF-8"
    assert by_name["datestyle"].value == "SQL, DMY"
    assert by_name["datestyle"].default == "iso, mdy"  # as postgresql.conf writes it
    assert by_name["lc_monetary"].is_modified and by_name["datestyle"].is_modified
