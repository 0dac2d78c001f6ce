"""Running a deployment on a worker: claim it, run its steps, record everything, finish.

Every step is idempotent (a step that already holds is skipped), so a retried or resumed
deployment finishes the job. A worker claims a deployment with a conditional UPDATE and beats
a heartbeat while it runs; a deployment whose worker died (its process is gone, or its
heartbeat is stale) is resumed by the next worker that starts or notices it, up to
``MAX_ATTEMPTS`` claims, and then failed with the reason. Cancel is checked at every step
boundary and while bytes move; the store's staging directory is removed on the way out, and
a model this run loaded is unloaded again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import psutil
import psycopg
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import close_old_connections, connection
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from console import sidecar as console_sidecar
from console.databases import managed_databases
from console.deployments import service
from console.deployments.models import Deployment, DeploymentStep
from console.deployments.steps import PROVISION_STEPS, STEPS_BY_ACTION, TITLES
from inference import catalog as model_catalog
from inference import provision
from inference.client import InferenceClient, InferenceError, InferenceUnavailable
from inference.export import ExportError
from inference.modelconfig import ModelConfigError
from inference.provision import ProgressEvent, ProvisionError
from inference.sources import SourceError
from inference.store import ModelStore, StoreError
from serverparams.apply import save_changes
from serverparams.catalog import split_list
from serverparams.server import ServerError, get_managed_server
from serverparams.validation import Edit

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER = timedelta(seconds=60)
MAX_ATTEMPTS = 3
UNSENT_AFTER = timedelta(seconds=5)  # a queued deployment whose task the broker refused
_PROGRESS_EVERY_S = 0.5
_CANCEL_CHECK_EVERY_S = 1.0
_LOG_LINES_KEPT = 400
_SIDECAR_TIMEOUT_S = 300.0  # loading a large model can take a while
EXTENSION = "azure_local_ai"
ALLOWLIST = "azure.extensions"
WARMUP_TEXT = "PostgreSQL stores each embedding beside the row it describes."
# A reranker's warm-up: a query and documents to score.
WARMUP_QUERY = "Where does PostgreSQL keep embeddings?"
WARMUP_DOCUMENTS = (WARMUP_TEXT, "The quick brown fox jumps over the lazy dog.")
_UPDATE_LOCK_TIMEOUT = "5s"

PROVISION_ERRORS = (ProvisionError, SourceError, StoreError, ExportError, ModelConfigError)


class StepFailed(Exception):
    """A step cannot go on; ``str()`` names the cause and says what to do."""


class Cancelled(Exception):
    pass


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def sidecar_client(timeout: float = _SIDECAR_TIMEOUT_S) -> InferenceClient:
    return console_sidecar.sidecar_client(timeout)


# -- claiming, heartbeat, recovery ----------------------------------------------------------


def claim(deployment_id: int, worker: str) -> bool:
    """Take the deployment if it is queued or its worker stopped beating; True if taken."""
    now = timezone.now()
    return bool(
        Deployment.objects.filter(pk=deployment_id)
        .filter(
            Q(state=Deployment.State.QUEUED)
            | Q(state=Deployment.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
        )
        .filter(cancel_requested=False)
        .update(
            state=Deployment.State.RUNNING,
            worker=worker,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        )
    )


class Heartbeat:
    """Stamps the deployment every few seconds while its worker runs it (its own thread, so
    that a long silent step such as an ONNX export still beats)."""

    def __init__(self, deployment_id: int, worker: str) -> None:
        self._id = deployment_id
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployment-heartbeat", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_S):
                Deployment.objects.filter(
                    pk=self._id, worker=self._worker, state=Deployment.State.RUNNING
                ).update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S * 2)


def _worker_gone(deployment: Deployment, now: timezone.datetime) -> bool:
    if deployment.heartbeat_at is None or deployment.heartbeat_at < now - STALE_AFTER:
        return True
    host, _, pid = deployment.worker.rpartition(":")
    # On this machine the process table answers at once, without waiting for the heartbeat.
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (a killed pool process that nobody has reaped
    yet, as in a container whose first process does not reap) does not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def recover_stopped(*, requeue_queued: bool = False) -> list[int]:
    """Resume (or, after MAX_ATTEMPTS claims, fail) deployments whose worker stopped, and send
    again queued ones the broker refused; with ``requeue_queued``, every queued one (the
    broker may have lost them). Returns the ids sent to a worker."""
    now = timezone.now()
    sent: list[int] = []
    for deployment in Deployment.objects.filter(state=Deployment.State.RUNNING):
        if not _worker_gone(deployment, now):
            continue
        running = Q(pk=deployment.pk, state=Deployment.State.RUNNING, worker=deployment.worker)
        step = deployment.steps.filter(state=DeploymentStep.State.RUNNING).first()
        where = f" during {step.name}" if step else ""
        if deployment.attempts >= MAX_ATTEMPTS or deployment.cancel_requested:
            reason = (
                f"cancelled: its worker ({deployment.worker}) stopped{where}"
                if deployment.cancel_requested
                else f"the worker running it ({deployment.worker}) stopped{where}, "
                f"{deployment.attempts} times; see the worker's log, then Retry"
            )
            state = (
                Deployment.State.CANCELLED
                if deployment.cancel_requested
                else Deployment.State.FAILED
            )
            if Deployment.objects.filter(running).update(
                state=state, error=reason, finished_at=now
            ):
                _close_open_steps(deployment, reason, DeploymentStep.State.FAILED)
            continue
        if Deployment.objects.filter(running).update(state=Deployment.State.QUEUED, worker=""):
            if step is not None:
                _append_log(step, f"the worker {deployment.worker} stopped{where}: resuming")
                step.save(update_fields=["log"])
            sent.append(deployment.pk)
    queued = Deployment.objects.filter(state=Deployment.State.QUEUED)
    if requeue_queued:
        sent += list(queued.values_list("pk", flat=True))
    else:
        # Queued a while ago, and the broker refused its task then (it was down): send again.
        sent += list(
            queued.filter(sent_at__isnull=True, created_at__lt=now - UNSENT_AFTER).values_list(
                "pk", flat=True
            )
        )
    for deployment_id in dict.fromkeys(sent):
        service.enqueue(deployment_id)
    return sent


def _close_open_steps(deployment: Deployment, reason: str, state: str) -> None:
    deployment.steps.filter(state=DeploymentStep.State.RUNNING).update(
        state=state, error=reason, finished_at=timezone.now()
    )
    deployment.steps.filter(state=DeploymentStep.State.PENDING).update(
        state=DeploymentStep.State.CANCELLED
    )


def _append_log(step: DeploymentStep, line: str) -> None:
    stamp = timezone.localtime().strftime("%H:%M:%S")
    lines = [*step.log_lines, f"{stamp} {line}"]
    step.log = "\n".join(lines[-_LOG_LINES_KEPT:])


# -- recording ------------------------------------------------------------------------------


class Recorder:
    """Writes what the steps report into their rows (progress at most every half second) and
    raises Cancelled when someone asked the deployment to stop."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.steps = {step.name: step for step in deployment.steps.all()}
        self.current: str | None = None
        self._last_progress = 0.0
        self._last_cancel_check = 0.0

    def check_cancel(self, *, now: bool = False) -> None:
        moment = time.monotonic()
        if not now and moment - self._last_cancel_check < _CANCEL_CHECK_EVERY_S:
            return
        self._last_cancel_check = moment
        if Deployment.objects.filter(pk=self.deployment.pk, cancel_requested=True).exists():
            raise Cancelled()

    def failing_step(self, names: list[str]) -> str:
        """The step a failure belongs to: the one running, else the first not yet done (a
        failure between two steps, before the next one reported anything, is the next's)."""
        done = (DeploymentStep.State.SUCCEEDED, DeploymentStep.State.SKIPPED)
        if self.current is not None:
            return self.current
        return next((n for n in names if self.steps[n].state not in done), names[-1])

    def start(self, name: str, message: str = "") -> None:
        self.check_cancel(now=True)
        step = self.steps[name]
        self.current = name
        step.state = DeploymentStep.State.RUNNING
        step.started_at = timezone.now()
        step.finished_at = None
        step.done = step.total = 0
        step.error = ""
        step.message = message
        if message:
            _append_log(step, message)
        step.save()

    def log(self, name: str, line: str) -> None:
        step = self.steps[name]
        step.message = line
        _append_log(step, line)
        step.save(update_fields=["message", "log"])

    def progress(self, name: str, done: int, total: int, unit: str = "bytes") -> None:
        step = self.steps[name]
        step.done, step.total, step.unit = done, total, unit
        moment = time.monotonic()
        if moment - self._last_progress >= _PROGRESS_EVERY_S or (total and done >= total):
            self._last_progress = moment
            step.save(update_fields=["done", "total", "unit"])
        self.check_cancel()

    def finish(self, name: str, state: str, message: str = "") -> None:
        step = self.steps[name]
        if step.started_at is None:
            step.started_at = timezone.now()
        step.state = state
        step.finished_at = timezone.now()
        if message:
            step.message = message
            _append_log(step, message)
        step.save()
        if self.current == name:
            self.current = None

    def succeed(self, name: str, message: str = "") -> None:
        self.finish(name, DeploymentStep.State.SUCCEEDED, message)

    def skip(self, name: str, message: str) -> None:
        if self.steps[name].state != DeploymentStep.State.RUNNING:
            self.steps[name].started_at = timezone.now()
        self.finish(name, DeploymentStep.State.SKIPPED, f"skipped: {message}")

    def fail(self, name: str, error: str) -> None:
        step = self.steps[name]
        step.error = error
        self.finish(name, DeploymentStep.State.FAILED, error)

    def provision_event(self, event: ProgressEvent) -> None:
        """inference.provision's progress, into the step rows of the same names."""
        if event.kind == "start":
            self.start(event.step, event.message)
        elif event.kind == "progress":
            self.progress(event.step, event.done, event.total)
        elif event.kind == "log":
            self.log(event.step, event.message)
        elif event.kind == "skip":
            self.skip(event.step, event.message)
        elif event.kind == "done":
            self.succeed(event.step, event.message)


# -- the steps ------------------------------------------------------------------------------


@dataclass
class Context:
    deployment: Deployment
    recorder: Recorder
    store: ModelStore = field(default_factory=ModelStore)
    loaded_here: bool = False  # this run loaded the model (cancel unloads it again)
    precision: str = "fp32"  # what the sidecar serves, once known

    @property
    def uri(self) -> str:
        return self.deployment.model_uri


def _preflight(ctx: Context) -> str:
    entry = _entry(ctx.uri)
    problems = entry.resource_problems()
    if problems:
        raise StepFailed(
            "this machine cannot host the model: "
            + "; ".join(problems)
            + ". Deploy a smaller model, or run on a machine with more memory and cores"
        )
    ctx.recorder.log(
        "preflight",
        f"{entry.uri} needs {entry.memory_mb} MB of memory and "
        f"{entry.min_cores} core(s): this machine has enough",
    )
    try:
        with sidecar_client(timeout=5) as client:
            client.health()
    except InferenceError as exc:
        raise StepFailed(f"the inference sidecar is down: {exc}") from None
    ctx.recorder.log("preflight", f"the inference sidecar answers at {settings.INFERENCE_URL}")
    try:
        with get_managed_server().connect() as conn:
            conn.execute("SELECT 1")
    except (ServerError, psycopg.Error) as exc:
        raise StepFailed(
            f"the managed PostgreSQL server cannot be reached ({str(exc).strip()}); start it "
            "with `manage.py server start` (make run starts it)"
        ) from None
    return "the machine, the sidecar and the managed server are ready"


def _provision(ctx: Context) -> str:
    recorder = ctx.recorder
    try:
        result = provision.deploy(
            ctx.uri,
            source=ctx.deployment.source or None,
            precision=ctx.deployment.precision,
            store=ctx.store,
            progress=recorder.provision_event,
        )
    except PROVISION_ERRORS as exc:
        raise StepFailed(str(exc)) from None
    for name in PROVISION_STEPS:  # a path that never mentioned a step had nothing to do there
        if recorder.steps[name].state in (DeploymentStep.State.PENDING,):
            recorder.skip(name, "nothing to do")
    if ctx.deployment.precision == "int8" and not result.int8_admitted:
        figures = result.int8 or {}
        recorder.log(
            "install",
            "the int8 variant did not pass its quality gate "
            f"({figures.get('error') or 'see the figures on the model page'}): fp32 serves it",
        )
    ctx.precision = (
        "int8" if result.int8_admitted and ctx.deployment.precision == "int8" else "fp32"
    )
    return ""


def _register(ctx: Context) -> str:
    stored = ctx.store.get(ctx.uri)
    if stored is None:
        raise StepFailed(f"{ctx.uri} is not in the model store {ctx.store.root}; deploy again")
    path = str(stored.path.resolve())
    with sidecar_client() as client:
        try:
            current = client.model(ctx.uri)
        except InferenceError as exc:
            if exc.status != 404:
                raise StepFailed(f"the inference sidecar: {exc}") from None
            current = None
        if current is not None:
            same = current.get("model_path") == path and current.get("precision") == ctx.precision
            if same and current.get("loaded"):
                ctx.recorder.skip("register", f"{ctx.uri} is registered and loaded already")
                return ""
            if not same:
                ctx.recorder.log(
                    "register",
                    f"replacing the registration of {ctx.uri} "
                    f"({current.get('precision')} from {current.get('model_path')})",
                )
                client.unregister(ctx.uri)
        try:
            info = client.register(ctx.uri, path, precision=ctx.precision, load=True)
        except InferenceError as exc:
            raise StepFailed(f"the inference sidecar refused {ctx.uri}: {exc}") from None
    ctx.loaded_here = True
    return f"registered as id {info.get('id')} ({ctx.precision}) and loaded"


def _warmup(ctx: Context) -> str:
    entry = _entry(ctx.uri)
    if entry.kind == "reranker":
        return _warmup_reranker(ctx, entry)
    started = time.perf_counter()
    with sidecar_client() as client:
        try:
            vectors, usage = client.embed(ctx.uri, [WARMUP_TEXT])
        except InferenceError as exc:
            raise StepFailed(f"the probe embedding failed: {exc}") from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    dimensions = int(vectors.shape[1])
    norm = float(np.linalg.norm(vectors[0]))
    if dimensions != entry.dimensions:
        raise StepFailed(
            f"the probe embedding has {dimensions} dimensions where the catalog says "
            f"{entry.dimensions}: the files are not this model; deploy it again with --force"
        )
    if not np.isfinite(norm) or (entry.normalize and abs(norm - 1.0) > 1e-3):
        raise StepFailed(f"the probe embedding's norm is {norm:.4f}, not 1: the model is broken")
    return (
        f"probe embedding: {dimensions} dimensions, norm {norm:.4f}, "
        f"{usage.get('prompt_tokens', '?')} tokens, {elapsed_ms:.0f} ms"
    )


def _warmup_reranker(ctx: Context, entry: model_catalog.CatalogEntry) -> str:
    """A probe ranking: every document scored once, each score finite (and, where the model's
    activation is the sigmoid, between 0 and 1)."""
    started = time.perf_counter()
    with sidecar_client() as client:
        try:
            ranked = client.rerank(ctx.uri, WARMUP_QUERY, WARMUP_DOCUMENTS)
        except InferenceError as exc:
            raise StepFailed(f"the probe ranking failed: {exc}") from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    if sorted(index for index, _ in ranked) != list(range(len(WARMUP_DOCUMENTS))):
        raise StepFailed(
            f"the probe ranking scored documents {[index for index, _ in ranked]} of "
            f"{len(WARMUP_DOCUMENTS)}: the model is broken"
        )
    scores = [score for _, score in ranked]
    bounded = getattr(entry.config, "activation", "") == "sigmoid"
    if not all(np.isfinite(scores)) or (bounded and not all(0 <= x <= 1 for x in scores)):
        raise StepFailed(f"the probe ranking's scores are {scores}: the model is broken")
    return (
        f"probe ranking: {len(scores)} documents scored "
        f"({', '.join(f'{x:.4f}' for x in scores)}, best first), {elapsed_ms:.0f} ms"
    )


def _allowlist(ctx: Context) -> str:
    wanted = [EXTENSION, "vector"]
    deployment = ctx.deployment
    user = deployment.requested_by or AnonymousUser()
    for _attempt in range(3):
        try:
            with get_managed_server().connect() as conn:
                row = conn.execute(f"SHOW {ALLOWLIST}").fetchone()
        except (ServerError, psycopg.Error) as exc:
            raise StepFailed(
                f"cannot read {ALLOWLIST} on the managed server: {str(exc).strip()}"
            ) from None
        current = row[0] if row else ""
        members = split_list(current)
        missing = [name for name in wanted if name not in members]
        if not missing:
            ctx.recorder.skip("allowlist", f"{ALLOWLIST} already allows {', '.join(wanted)}")
            return ""
        value = ",".join([*members, *missing])
        try:
            result = save_changes(
                [Edit(name=ALLOWLIST, value=value, base=current)],
                user,
                on_behalf_of=f"deployment #{deployment.pk}",
            )
        except (ServerError, psycopg.Error) as exc:
            raise StepFailed(f"cannot change {ALLOWLIST}: {str(exc).strip()}") from None
        if result.ok:
            return f"{ALLOWLIST} = {value} (reloaded)"
        problems = {**result.errors, **result.failed}
        if not result.conflicts:
            raise StepFailed(f"cannot change {ALLOWLIST}: {'; '.join(problems.values())}")
        # Someone saved the parameter meanwhile: read it again and add to theirs.
    raise StepFailed(f"{ALLOWLIST} kept changing while this deployment tried to add to it")


def _ready(ctx: Context) -> str:
    updated = _update_extension(ctx)
    done = f"{ctx.uri} is deployed and {EXTENSION} is allowed"
    if updated:
        done += f"; {EXTENSION} updated in {', '.join(updated)}"
    return done


_INSTALLED_SQL = """
SELECT e.extversion, a.default_version
FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
WHERE e.extname = %s
"""


def _update_extension(ctx: Context) -> list[str]:
    """Bring an older azure_local_ai installed in a database of the managed server up to the
    version the server has (``ALTER EXTENSION ... UPDATE``), so that what a newer version adds
    (rank() since 1.1.0) is there; a database that cannot be updated is logged and left as it
    is. Returns "database (old -> new)" for each one updated."""
    updated: list[str] = []
    server = get_managed_server()
    try:
        databases = managed_databases()
    except (ServerError, psycopg.Error) as exc:
        ctx.recorder.log("ready", f"cannot list the databases to update {EXTENSION} in: {exc}")
        return updated
    for database in databases:
        try:
            with server.connect(database) as conn:
                row = conn.execute(_INSTALLED_SQL, [EXTENSION]).fetchone()
                if row is None or row[0] == row[1]:
                    continue
                conn.execute(f"SET lock_timeout = '{_UPDATE_LOCK_TIMEOUT}'")
                conn.execute(f"ALTER EXTENSION {EXTENSION} UPDATE")  # to default_version
        except (ServerError, psycopg.Error) as exc:
            ctx.recorder.log(
                "ready",
                f"{EXTENSION} in {database} stays at its version: the update failed "
                f"({str(exc).strip()}); run ALTER EXTENSION {EXTENSION} UPDATE there",
            )
            continue
        updated.append(f"{database} ({row[0]} → {row[1]})")
    return updated


def _unload(ctx: Context) -> str:
    with sidecar_client() as client:
        try:
            current = client.model(ctx.uri)
        except InferenceError as exc:
            if exc.status == 404:
                ctx.recorder.skip("unload", f"{ctx.uri} is not registered with the sidecar")
                return ""
            raise StepFailed(f"the inference sidecar: {exc}") from None
        if not current.get("loaded"):
            ctx.recorder.skip("unload", f"{ctx.uri} is not loaded")
            return ""
        client.unload(ctx.uri)
    return f"{ctx.uri} unloaded; SQL calls for it now fail with a 'not deployed' error"


def _entry(uri: str) -> model_catalog.CatalogEntry:
    try:
        return model_catalog.catalog().get(uri)
    except model_catalog.CatalogError as exc:
        raise StepFailed(str(exc)) from None


StepFunction = Callable[[Context], str]
STEP_FUNCTIONS: dict[str, StepFunction] = {
    "preflight": _preflight,
    "register": _register,
    "warmup": _warmup,
    "allowlist": _allowlist,
    "ready": _ready,
    "unload": _unload,
}


# -- the runner -----------------------------------------------------------------------------


def run(deployment_id: int, worker: str | None = None) -> str:
    """Run (or resume) a deployment; returns its final state, or "not claimed"."""
    worker = worker or worker_name()
    close_old_connections()
    if not claim(deployment_id, worker):
        return "not claimed"
    deployment = Deployment.objects.get(pk=deployment_id)
    with Heartbeat(deployment_id, worker):
        state, error = _run_steps(deployment)
    Deployment.objects.filter(
        pk=deployment_id, worker=worker, state=Deployment.State.RUNNING
    ).update(state=state, error=error, finished_at=timezone.now())
    log.info("deployment %s of %s: %s %s", deployment_id, deployment.model_uri, state, error)
    return state


def _run_steps(deployment: Deployment) -> tuple[str, str]:
    recorder = Recorder(deployment)
    ctx = Context(deployment=deployment, recorder=recorder)
    names = [step.name for step in STEPS_BY_ACTION[deployment.action]]
    try:
        for name in names:
            if name in PROVISION_STEPS:
                if name == PROVISION_STEPS[0]:
                    _provision(ctx)
                continue
            recorder.start(name)
            message = STEP_FUNCTIONS[name](ctx)
            if recorder.steps[name].state == DeploymentStep.State.RUNNING:
                recorder.succeed(name, message)
        return Deployment.State.SUCCEEDED, ""
    except Cancelled:
        _clean_up(ctx)
        _close_open_steps(deployment, "cancelled", DeploymentStep.State.CANCELLED)
        return Deployment.State.CANCELLED, _where(recorder, "cancelled")
    except StepFailed as exc:
        step = recorder.failing_step(names)
        recorder.fail(step, str(exc))
        _close_open_steps(deployment, str(exc), DeploymentStep.State.FAILED)
        return Deployment.State.FAILED, f"{_title(step)} failed: {exc}"
    except Exception as exc:
        log.exception("deployment %s failed unexpectedly", deployment.pk)
        step = recorder.failing_step(names)
        message = f"unexpected error: {exc!r}; see the worker's log, then Retry"
        recorder.fail(step, message)
        _close_open_steps(deployment, message, DeploymentStep.State.FAILED)
        return Deployment.State.FAILED, f"{_title(step)} failed: {message}"


def _title(step: str) -> str:
    return TITLES.get(step, step)


def _where(recorder: Recorder, what: str) -> str:
    return f"{what} during {_title(recorder.current)}" if recorder.current else what


def _clean_up(ctx: Context) -> None:
    """Undo what a cancelled run set going: the store's staging directory is already gone
    (its context manager); a model this run loaded is unloaded again."""
    if not ctx.loaded_here:
        return
    try:
        with sidecar_client(timeout=30) as client:
            client.unload(ctx.uri)
        if ctx.recorder.current:
            ctx.recorder.log(ctx.recorder.current, f"unloaded {ctx.uri} again")
    except (InferenceError, InferenceUnavailable) as exc:
        log.warning("could not unload %s after cancel: %s", ctx.uri, exc)
