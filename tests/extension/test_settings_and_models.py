"""get_setting/set_setting and the model functions, against the real sidecar."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.extension.conftest import TINY_DIMS, TINY_URI
from tests.fixtures.sidecar import SidecarProcess


def test_get_setting_returns_all_or_the_requested_keys(
    conn: psycopg.Connection, sidecar: SidecarProcess
) -> None:
    (everything,) = conn.execute("SELECT azure_local_ai.get_setting()").fetchone()
    assert everything == sidecar.client.settings()
    assert {"intra_op_parallelism", "inter_op_parallelism", "spin_control"} <= everything.keys()
    (some,) = conn.execute(
        "SELECT azure_local_ai.get_setting(ARRAY['inter_op_parallelism', 'spin_control'])"
    ).fetchone()
    assert some == {k: everything[k] for k in ("inter_op_parallelism", "spin_control")}
    (one,) = conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone()
    assert one == str(everything["spin_control"]).lower()


def test_set_setting_changes_the_sidecar_and_reads_back(
    conn: psycopg.Connection, sidecar: SidecarProcess
) -> None:
    before = sidecar.client.settings()
    try:
        conn.execute("SELECT azure_local_ai.set_setting('max_wait_ms', '3.5')")
        assert sidecar.client.settings()["max_wait_ms"] == 3.5
        assert conn.execute("SELECT azure_local_ai.get_setting('max_wait_ms')").fetchone() == (
            "3.5",
        )
        conn.execute(
            "SELECT azure_local_ai.set_setting(ARRAY['inter_op_parallelism', 'spin_control'],"
            " ARRAY['2', 'false'])"
        )
        after = sidecar.client.settings()
        assert (after["inter_op_parallelism"], after["spin_control"]) == (2, False)
    finally:
        sidecar.client.update_settings(before)


def test_bad_setting_values_are_refused_and_nothing_changes(
    conn: psycopg.Connection, sidecar: SidecarProcess
) -> None:
    before = sidecar.client.settings()
    with pytest.raises(errors.InvalidParameterValue) as info:
        conn.execute("SELECT azure_local_ai.set_setting('intra_op_parallelism', 'many')")
    assert "intra_op_parallelism" in info.value.diag.message_primary
    with pytest.raises(errors.InvalidParameterValue):
        conn.execute(
            "SELECT azure_local_ai.set_setting(ARRAY['max_wait_ms', 'no_such_key'],"
            " ARRAY['4', '1'])"
        )
    assert sidecar.client.settings() == before
    with pytest.raises(errors.InvalidParameterValue, match="unknown inference setting") as info:
        conn.execute("SELECT azure_local_ai.get_setting('no_such_key')")
    assert "intra_op_parallelism" in info.value.diag.message_hint  # the known settings
    with pytest.raises(errors.InvalidParameterValue, match="same number of elements"):
        conn.execute("SELECT azure_local_ai.set_setting(ARRAY['a', 'b'], ARRAY['1'])")
    with pytest.raises(errors.NullValueNotAllowed):
        conn.execute("SELECT azure_local_ai.set_setting('max_wait_ms', NULL)")


def test_model_metadata_and_loaded(conn: psycopg.Connection) -> None:
    (metadata,) = conn.execute("SELECT azure_local_ai.model_metadata(%s)", [TINY_URI]).fetchone()
    assert metadata["model_uri"] == TINY_URI
    assert metadata["dimensions"] == TINY_DIMS
    assert metadata["loaded"] is True
    assert metadata["files"]  # path -> sha256
    assert conn.execute("SELECT azure_local_ai.model_loaded(%s)", [TINY_URI]).fetchone() == (True,)
    assert conn.execute("SELECT azure_local_ai.model_loaded(NULL)").fetchone() == (None,)


def test_register_unload_and_unregister_a_model(
    conn: psycopg.Connection, sidecar: SidecarProcess, tiny_model_dir: Path
) -> None:
    uri = "tiny-lifecycle:v1"
    (model_id,) = conn.execute(
        "SELECT azure_local_ai.model_register(%s, %s)", [uri, str(tiny_model_dir)]
    ).fetchone()
    try:
        assert model_id == sidecar.client.model(uri)["id"]
        assert conn.execute("SELECT azure_local_ai.model_loaded(%s)", [uri]).fetchone() == (True,)

        conn.execute("SELECT azure_local_ai.model_unload(%s)", [uri])
        assert conn.execute("SELECT azure_local_ai.model_loaded(%s)", [uri]).fetchone() == (False,)
        with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'a cat')", [uri])
        assert info.value.diag.message_hint  # says how to get it loaded
    finally:
        conn.execute("SELECT azure_local_ai.model_unregister(%s)", [uri])
    with pytest.raises(errors.UndefinedObject):
        conn.execute("SELECT azure_local_ai.model_metadata(%s)", [uri])


def test_registering_a_missing_path_is_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        conn.execute(
            "SELECT azure_local_ai.model_register('ghost:v1', %s)", [str(tmp_path / "missing")]
        )
    with pytest.raises(errors.NullValueNotAllowed):
        conn.execute("SELECT azure_local_ai.model_register('ghost:v1', NULL)")


def test_version(conn: psycopg.Connection) -> None:
    (version,) = conn.execute("SELECT azure_local_ai.version()").fetchone()
    (installed,) = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
    ).fetchone()
    assert version == installed
