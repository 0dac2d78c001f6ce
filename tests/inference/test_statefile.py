"""The sidecar's state files are replaced whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.statefile import write_json_atomic


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "sidecar" / "settings.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    write_json_atomic(path, {"models": []})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"models": [object()]})  # not JSON-serialisable, half-written
    assert json.loads(path.read_text()) == {"models": []}
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]
