"""The Celery tasks are sent by name, through each app's dispatch module.

Nothing in the console imports a ``tasks`` module: Celery's autodiscovery finds them, and the
tasks import what they run (the pipeline, the runner), so no import cycle goes through them.
These tests need no database, broker or worker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from console.celery import app as celery_app
from console.deployments import dispatch as deployment_dispatch
from console.jobs import dispatch as job_dispatch

CONSOLE = Path(__file__).resolve().parents[2] / "console"


def _module_name(path: Path) -> str:
    parts = path.relative_to(CONSOLE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(CONSOLE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every console module ``name`` imports, at any depth of its code (function-local
    imports included); ``from package import module`` counts as importing the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {module for module in found if module in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_console_module_imports_a_tasks_module() -> None:
    graph = _graph()
    tasks = {name for name in graph if name.rpartition(".")[2] == "tasks"}
    assert {"console.deployments.tasks", "console.jobs.tasks"} <= tasks
    importers = {
        name: sorted(imported & tasks) for name, imported in graph.items() if imported & tasks
    }
    assert importers == {}


@pytest.mark.parametrize("app", ["console.deployments", "console.jobs"])
def test_an_apps_modules_import_one_another_without_a_cycle(app: str) -> None:
    graph = {
        name: {module for module in imported if module.startswith(f"{app}.")}
        for name, imported in _graph().items()
        if name.startswith(f"{app}.")
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            pytest.fail(f"import cycle: {cycle}")
        if name in done:
            return
        for imported in sorted(graph.get(name, ())):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_each_dispatch_function_sends_a_task_celery_discovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    celery_app.autodiscover_tasks(force=True)  # what a worker does when it starts
    sent: list[tuple[str, dict]] = []

    def send_task(name: str, **options: object) -> None:
        sent.append((name, options))

    monkeypatch.setattr(celery_app, "send_task", send_task)
    deployment_dispatch.run_deployment(7)
    job_dispatch.run_job_slot(8, 1, nudge=True)
    assert [name for name, _ in sent] == [
        deployment_dispatch.RUN_DEPLOYMENT,
        job_dispatch.RUN_JOB,
    ]
    assert {*deployment_dispatch.TASK_NAMES, *job_dispatch.TASK_NAMES} <= set(celery_app.tasks)
    # No queue is named: the app routes each task by its name (console/workers.py).
    assert sent[0][1] == {"args": [7]}
    job_options = sent[1][1]
    assert job_options["args"] == [8, 1] and job_options["kwargs"] == {"nudge": True}
    assert "queue" not in job_options and job_options["countdown"] is None
    assert job_options["task_id"]


def test_a_job_slot_the_broker_refuses_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("the broker is down")

    monkeypatch.setattr(celery_app, "send_task", broker_down)
    job_dispatch.run_job_slot(8, 1, nudge=True)
    assert "the broker refused its task" in caplog.text
    with pytest.raises(ConnectionRefusedError):
        deployment_dispatch.run_deployment(7)  # service.enqueue decides: the row stays queued
