"""``manage.py embedjob create|list|pause|resume|delete|retry-failed|change-model|status``:
embedding jobs from the command line, through the same service as the console."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.jobs import service
from console.jobs.models import DEFAULT_BATCH_SIZE, EmbeddingJob


class Command(BaseCommand):
    help = (
        "Create and manage embedding jobs: a job backfills a table's embeddings on the Celery "
        "workers and keeps them in sync with inserts, updates and deletes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create a job and start its backfill")
        create.add_argument("--database", required=True, help="a database of the managed server")
        create.add_argument("--table", required=True, help="table, optionally schema.table")
        create.add_argument("--key", required=True, help="its primary key or a unique column")
        create.add_argument(
            "--columns", required=True, help="the text column(s) to embed, comma-separated"
        )
        create.add_argument(
            "--format", default="", help="how to join the columns, e.g. '{title}: {body}'"
        )
        create.add_argument("--model", required=True, help="a deployed model, e.g. tiny:v1")
        create.add_argument("--input-type", choices=EmbeddingJob.InputType.values, default="none")
        create.add_argument(
            "--column", required=True, help="the vector column to fill (created if missing)"
        )
        create.add_argument(
            "--chunk-tokens",
            type=int,
            default=None,
            help="split texts into chunks of this many of the model's tokens (a chunk table)",
        )
        create.add_argument("--chunk-overlap", type=int, default=0, help="tokens chunks share")
        create.add_argument(
            "--chunk-table", default="", help="the chunk table to create (default TABLE_chunks)"
        )
        create.add_argument(
            "--build-index", action="store_true", help="build an HNSW index once backfilled"
        )
        create.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
        create.add_argument("--workers", type=int, default=1, help="batches run at once")
        create.add_argument("--max-attempts", type=int, default=5)
        create.add_argument(
            "--embed-on",
            choices=EmbeddingJob.EmbedOn.values,
            default=EmbeddingJob.EmbedOn.SERVER,
            help="where texts are embedded: the server's sidecar, or each worker's own",
        )
        create.add_argument("--user", default="", help="console user to record as creator")
        actions.add_parser("list", help="every job with its progress")
        for name, text in (
            ("pause", "stop taking batches (changes are still queued)"),
            ("resume", "take batches again"),
            ("retry-failed", "queue the failed rows again"),
            ("status", "progress and the failed rows' reasons"),
            ("delete", "drop the job's triggers and tables"),
        ):
            sub = actions.add_parser(name, help=text)
            sub.add_argument("job", type=int, metavar="JOB_ID")
            if name == "delete":
                sub.add_argument(
                    "--drop-column",
                    action="store_true",
                    help="drop the vector column (or the chunk table) too",
                )
        change = actions.add_parser(
            "change-model", help="embed every row again with another model, in the background"
        )
        change.add_argument("job", type=int, metavar="JOB_ID")
        change.add_argument("model", help="a deployed model")
        where = actions.add_parser(
            "embed-on", help="embed the next batches on the server or on the workers"
        )
        where.add_argument("job", type=int, metavar="JOB_ID")
        where.add_argument("where", choices=EmbeddingJob.EmbedOn.values)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "create":
                self._create(options)
            elif action == "list":
                self._list()
            else:
                job = self._job(options["job"])
                if action == "pause":
                    service.pause(job)
                    self.stdout.write(f"job #{job.pk} paused")
                elif action == "resume":
                    service.resume(job)
                    self.stdout.write(f"job #{job.pk} resumed")
                elif action == "delete":
                    service.delete(job, drop_column=options["drop_column"])
                    self.stdout.write(f"job #{job.pk} deleted")
                elif action == "change-model":
                    queued = service.change_model(job, options["model"])
                    self.stdout.write(
                        f"job #{job.pk}: {queued} row(s) queued to embed again with "
                        f"{options['model']}; the current vectors stay until every row is done"
                    )
                elif action == "embed-on":
                    service.set_embed_on(job, options["where"])
                    self.stdout.write(f"job #{job.pk} now embeds on the {options['where']}")
                elif action == "retry-failed":
                    moved = service.retry_failed(job)
                    self.stdout.write(f"job #{job.pk}: {moved} failed row(s) queued again")
                else:
                    self._status(job)
        except service.JobError as exc:
            raise CommandError(str(exc)) from None

    def _job(self, pk: int) -> EmbeddingJob:
        try:
            return EmbeddingJob.objects.get(pk=pk)
        except EmbeddingJob.DoesNotExist:
            raise CommandError(f"there is no job #{pk} (see `embedjob list`)") from None

    def _create(self, options: dict[str, Any]) -> None:
        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get(username=options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"no console user {options['user']!r}") from None
        chunking: dict[str, Any] = {"build_index": options["build_index"]}
        if options["chunk_tokens"] is not None:
            chunking.update(
                chunk_tokens=options["chunk_tokens"],
                chunk_overlap=options["chunk_overlap"],
                chunk_table=options["chunk_table"],
            )
        job = service.create(
            database=options["database"],
            table=options["table"],
            key=options["key"],
            columns=options["columns"].split(","),
            text_format=options["format"],
            model_uri=options["model"],
            input_type=options["input_type"],
            column=options["column"],
            user=user,
            batch_size=options["batch_size"],
            workers=options["workers"],
            max_attempts=options["max_attempts"],
            embed_on=options["embed_on"],
            **chunking,
        )
        self.stdout.write(
            f"job #{job.pk}: {job.destination} vector({job.dimensions}) from "
            f"{', '.join(job.text_columns)} with {job.model_uri}; "
            f"{job.backfill_rows} row(s) queued"
        )

    def _list(self) -> None:
        jobs = EmbeddingJob.objects.exclude(state=EmbeddingJob.State.DELETED)
        if not jobs:
            self.stdout.write("no embedding jobs")
        for job in jobs:
            line = f"#{job.pk} {job.state:7} {job.database}:{job.destination} {job.model_uri}"
            try:
                p = service.progress(job)
                line += f" {p.done}/{p.total} done, {p.pending} pending, {p.failed} failed"
            except service.JobError as exc:
                line += f" (progress unknown: {exc})"
            self.stdout.write(line)

    def _status(self, job: EmbeddingJob) -> None:
        self.stdout.write(str(job))
        if job.state == EmbeddingJob.State.DELETED:
            return
        self.stdout.write(f"embedded on the {job.embed_on}")
        for refusal in job.refusals.all():
            self.stdout.write(f"worker {refusal.worker} refuses its batches: {refusal.reason}")
        p = service.progress(job)
        self.stdout.write(
            f"{p.done}/{p.total} rows done ({p.percent}%), {p.pending} pending, "
            f"{p.failed} failed, {job.embedded_rows} embeddings written"
        )
        if p.reembedding:
            self.stdout.write(
                f"embedding every row again with {p.reembedding}; queries use the vectors of "
                f"{job.model_uri} until it is done"
            )
        if p.chunks is not None:
            self.stdout.write(f"{p.chunks} chunk(s); {p.chunked} row(s) split in several")
        if job.build_index:
            built = job.index_built_at
            self.stdout.write(
                f"HNSW index: built {built:%Y-%m-%d %H:%M:%S}" if built else
                "HNSW index: built once the backfill is done"
            )  # fmt: skip
        if p.pending:
            eta = "unknown" if p.eta_s is None else f"{p.eta_s:.0f} s"
            self.stdout.write(f"{p.rows_per_s:.1f} rows/s over the last minute, ETA {eta}")
        if job.last_error:
            self.stdout.write(f"waiting: {job.last_error}")
        for key, reason, attempts in service.failures(job):
            self.stdout.write(f"failed {key} after {attempts} attempt(s): {reason}")
