"""The machine-resource probe and the sentences that say which of a model's needs it misses."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.catalog import load_catalog
from inference.resources import ModelNeeds, Resources, probe, unmet
from tests.fixtures.realmodel import tiny_entry, write_catalog

SMALL = Resources(
    cores=2,
    memory_mb=1000,
    available_memory_mb=600,
    disk_total_gb=10.0,
    disk_free_gb=0.5,
    disk_path=Path("/var/models"),
)


def test_probe_measures_the_disk_of_the_nearest_existing_parent(tmp_path: Path) -> None:
    asked = tmp_path / "not" / "yet" / "there"
    machine = probe(asked)
    assert machine.disk_path == asked
    assert 0 < machine.disk_free_gb <= machine.disk_total_gb
    assert machine.cores >= 1
    assert 0 < machine.available_memory_mb <= machine.memory_mb


def test_needs_the_machine_meets_are_not_problems() -> None:
    assert unmet("m:v1", ModelNeeds(memory_mb=1000, min_cores=2, disk_mb=512), SMALL) == []


def test_each_unmet_need_says_what_is_needed_and_what_the_machine_has() -> None:
    problems = unmet("m:v1", ModelNeeds(memory_mb=2048, min_cores=4, disk_mb=600), SMALL)
    assert problems == [
        "m:v1 needs 2048 MB of memory; this machine has 1000 MB",
        "m:v1 needs at least 4 CPU cores; this machine has 2",
        "m:v1 needs 600 MB of disk space for its files; the disk holding /var/models has "
        "512 MB free",
    ]


def test_disk_is_not_checked_when_the_need_is_not_declared() -> None:
    assert unmet("m:v1", ModelNeeds(memory_mb=16), SMALL) == []


def test_catalog_entry_declares_its_needs_and_is_checked_against_a_given_machine(
    tmp_path: Path,
) -> None:
    path = write_catalog(tmp_path / "catalog.json", tiny_entry(memory_mb=2000, disk_mb=4096))
    entry = load_catalog(path).get("tiny-model:v1")
    assert entry.needs == ModelNeeds(memory_mb=2000, min_cores=1, disk_mb=4096)
    problems = entry.resource_problems(SMALL)
    assert len(problems) == 2
    assert "2000 MB of memory" in problems[0] and "4096 MB of disk space" in problems[1]


def test_shipped_models_declare_memory_and_cores() -> None:
    e5 = load_catalog().get("multilingual-e5-small:v1")
    assert (e5.memory_mb, e5.min_cores) == (1024, 2)


@pytest.mark.parametrize("cores", [1, 2])
def test_the_probe_counts_logical_cores(monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    from inference import resources

    monkeypatch.setattr(resources.psutil, "cpu_count", lambda logical=True: cores)
    assert probe().cores == cores
