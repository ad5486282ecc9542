"""The `postyard` command."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from sqlalchemy.orm import Session

from postyard.clock import isoformat
from postyard.config import ConfigError, Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.db.models import ApiKey
from postyard.routing import Plan
from postyard.services.keys import Scope

app = typer.Typer(
    help="Postyard: lifecycle email routed to your own SMTP servers.", no_args_is_help=True
)
workspace_app = typer.Typer(help="Create workspaces and their API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
key_app = typer.Typer(help="A workspace's API keys: create, list, revoke.", no_args_is_help=True)
secrets_app = typer.Typer(help="The keys that encrypt stored secrets.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(key_app, name="key")
app.add_typer(secrets_app, name="secrets")
app.add_typer(db_app, name="db")

console = Console()

GRACE_HELP = (
    "On SIGTERM or Ctrl+C, seconds that SMTP transactions under way may take to finish; "
    "any still running then are handed back to the queue."
)


def _settings() -> Settings:
    from postyard.secretbox import configured_keys

    try:
        settings = Settings.from_env()
        configured_keys(settings)  # a malformed POSTYARD_SECRET_KEYS fails here, not later
        return settings
    except ConfigError as error:
        console.print(f"[red]Configuration error:[/red] {error}")
        raise typer.Exit(2) from None


@contextmanager
def _migrated_session(settings: Settings) -> Iterator[Session]:
    """A session on an up-to-date schema, for commands that do one thing and exit."""
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            yield session
    finally:
        database.dispose()


def _configure_logging(level: int = logging.INFO) -> None:
    """Rich output for a person at a terminal; plain lines for log collectors.

    The worker logs a line per delivery, and Rich's formatting costs as much
    CPU as the delivery itself, so it is kept to interactive use.
    """
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


class LineFormatter(logging.Formatter):
    """Heads every line of a message, not just the first: the worker logs a batch's
    outcomes as one record of one line each, and a log collector reads lines."""

    def format(self, record: logging.LogRecord) -> str:
        formatted = super().format(record)
        message = record.message
        if "\n" not in message or not formatted.endswith(message):
            return formatted  # one line, or a traceback follows: as it is
        head = formatted[: len(formatted) - len(message)]
        return "\n".join(head + line for line in message.split("\n"))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8025,
    grace: Annotated[float, typer.Option(min=0, help=GRACE_HELP)] = 20.0,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help=(
                "Delivery worker processes to start beside the server. 0: one process "
                "delivers, with the API, web UI and jobs. On a machine with more cores, 1 or "
                "more lets a large send's fan-out and its delivery run at once."
            ),
        ),
    ] = 0,
) -> None:
    """Run the API, the web UI, the jobs and delivery; GET /metrics shows the queue and the
    delivery counters (with --workers, those of the worker processes, summed)."""
    import uvicorn

    from postyard.api.app import create_app

    _configure_logging()
    settings = _settings()
    upgrade(settings.database_url)
    # uvicorn turns SIGTERM into the app's shutdown, which stops the worker gracefully.
    uvicorn.run(
        create_app(settings, run_worker=True, grace_seconds=grace, worker_processes=workers),
        host=host,
        port=port,
        loop="uvloop",  # as `worker`: less CPU per SMTP transaction than asyncio's loop
        log_config=None,
    )


@app.command()
def worker(
    grace: Annotated[float, typer.Option(min=0, help=GRACE_HELP)] = 20.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics (GET /metrics) on this port; off if unset."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics port listens on.")
    ] = "127.0.0.1",
    supervised: Annotated[
        bool,
        typer.Option(
            help=(
                "Run as a worker of `postyard serve --workers`: deliver only (serve runs the "
                "jobs), wake on a line on standard input, stop when standard input closes."
            )
        ),
    ] = False,
) -> None:
    """Run a delivery worker and the background jobs (newsletter sends, broadcast triggers,
    time-window segments); start as many as the load needs. SIGTERM stops it gracefully."""
    import uvloop

    from postyard.delivery import outbox
    from postyard.delivery.processes import listen_to_supervisor
    from postyard.delivery.worker import Worker
    from postyard.metrics import Metrics
    from postyard.secretbox import secret_box
    from postyard.services.jobs import Jobs
    from postyard.services.runtime import Runtime

    _configure_logging()
    settings = _settings()
    log = logging.getLogger("postyard.worker")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            stop.set()

        if supervised:  # Ctrl+C reaches serve and its workers alike: serve stops them
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in (signal.SIGTERM,) if supervised else (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        database = Database(settings.database_url)
        box = secret_box(settings)
        metrics = Metrics()
        exporter = None
        if metrics_port is not None:
            from prometheus_client import start_http_server

            metrics.watch_queue(database)
            exporter, _ = start_http_server(metrics_port, metrics_host, metrics.registry)
            log.info("metrics on http://%s:%s/metrics", metrics_host, metrics_port)
        delivery = Worker(database, settings, box=box, metrics=metrics, grace_seconds=grace)
        forget = outbox.when_due(database.engine, delivery.wake)
        work = [delivery.run(stop)]
        if supervised:
            listen_to_supervisor(loop, delivery.wake, stop.set)
        else:
            work.append(Jobs(database, Runtime(settings, box)).run(stop))
        try:
            await asyncio.gather(*work)
        finally:
            forget()
            if exporter is not None:
                exporter.shutdown()
            database.dispose()

    # uvloop: about a quarter less CPU per SMTP transaction than asyncio's own loop.
    uvloop.run(run())


@workspace_app.command("create")
def workspace_create(
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    plan: Annotated[Plan, typer.Option(help="standard: one SMTP server; premium: up to 20.")] = (
        Plan.STANDARD
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Create a workspace and print its first API key (shown only this once)."""
    from postyard.services.workspaces import create_workspace

    settings = _settings()
    with _migrated_session(settings) as session:
        created = create_workspace(session, name, plan)
    if as_json:
        typer.echo(json.dumps({"workspace_id": created.workspace_id, "api_key": created.api_key}))
        return
    console.print(f"Workspace [bold]{name}[/bold] (id {created.workspace_id}, {plan.value} plan)")
    console.print(f"API key: [bold]{created.api_key}[/bold]")
    console.print("Keep the key now: Postyard stores only its hash and cannot show it again.")


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]Error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _key_json(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "workspace_id": key.workspace_id,
        "name": key.name,
        "scope": key.scope,
        "created_at": isoformat(key.created_at),
        "last_used_at": isoformat(key.last_used_at),
        "revoked_at": isoformat(key.revoked_at),
    }


@key_app.command("create")
def key_create(
    workspace_id: Annotated[int, typer.Argument(help="The workspace the key acts for.")],
    name: Annotated[str, typer.Option(help="A name that says who uses the key.")],
    scope: Annotated[
        Scope,
        typer.Option(help="admin: every endpoint; track: people, events and /v1/batch only."),
    ] = Scope.ADMIN,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Create an API key and print it (shown only this once)."""
    from postyard.db.models import Workspace
    from postyard.services.audit import Actor
    from postyard.services.keys import create_key

    name = name.strip()
    if not name or len(name) > 200 or any(c in name for c in "\r\n\x00"):
        _fail("--name takes 1 to 200 characters on one line.")
    settings = _settings()
    with _migrated_session(settings) as session:
        if session.get(Workspace, workspace_id) is None:
            _fail(f"There is no workspace {workspace_id}.")
        created = create_key(session, Actor.cli(workspace_id), name, scope)
        described = _key_json(created.key)
    if as_json:
        typer.echo(json.dumps({**described, "api_key": created.api_key}))
        return
    console.print(
        f"API key [bold]{name}[/bold] (id {described['id']}, scope {scope.value}) "
        f"for workspace {workspace_id}",
        highlight=False,
    )
    console.print(f"API key: [bold]{created.api_key}[/bold]", highlight=False)
    console.print("Keep the key now: Postyard stores only its hash and cannot show it again.")


@key_app.command("list")
def key_list(
    workspace_id: Annotated[int, typer.Argument(help="The workspace whose keys to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a workspace's keys, revoked ones included (never the keys themselves)."""
    from postyard.db.models import Workspace
    from postyard.services.keys import list_keys

    settings = _settings()
    with _migrated_session(settings) as session:
        if session.get(Workspace, workspace_id) is None:
            _fail(f"There is no workspace {workspace_id}.")
        rows = [_key_json(key) for key in list_keys(session, workspace_id)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"API keys of workspace {workspace_id}", title_justify="left")
    for column in ("Id", "Name", "Scope", "Created", "Last used", "Revoked"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["name"]),
            str(row["scope"]),
            str(row["created_at"]),
            str(row["last_used_at"] or "never"),
            str(row["revoked_at"] or "-"),
        )
    console.print(table)


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see `postyard key list`).")],
) -> None:
    """Revoke an API key: it answers 401 from the next request, and its web sessions end."""
    from postyard.services.errors import NotFound
    from postyard.services.keys import revoke_key

    settings = _settings()
    with _migrated_session(settings) as session:
        try:
            key = revoke_key(session, key_id)
        except NotFound as error:
            _fail(error.message)
        described = _key_json(key)
    console.print(
        f"Revoked API key {key_id} ({described['name']}, workspace {described['workspace_id']}) "
        f"at {described['revoked_at']}.",
        highlight=False,
    )


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret (SMTP passwords) with the first key of
    POSTYARD_SECRET_KEYS; older keys may be removed afterwards."""
    from postyard.secretbox import SecretKeyMismatch, secret_box
    from postyard.services.secrets import rotate_secrets

    settings = _settings()
    box = secret_box(settings)
    with _migrated_session(settings) as session:
        try:
            rotation = rotate_secrets(session, box)
        except SecretKeyMismatch as error:
            _fail(str(error))
    typer.echo(
        f"Re-encrypted {rotation.reencrypted} stored secrets with the newest key "
        f"({rotation.were_under_older_keys} were under an older key)."
    )
    if box.key_count > 1:
        typer.echo(
            "Older keys may now be removed from POSTYARD_SECRET_KEYS; while they stay, "
            "unsubscribe links and web sessions signed with them keep working."
        )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations to POSTYARD_DATABASE_URL."""
    settings = _settings()
    upgrade(settings.database_url)
    console.print("Database schema is up to date.")


@app.command()
def demo() -> None:
    """Show routing by campaign type on local SMTP servers, end to end."""
    from postyard.demo import run_demo

    console.print("Starting local SMTP servers and a throwaway SQLite database…")
    for step in asyncio.run(run_demo()):
        table = Table(title=step.title, title_justify="left")
        table.add_column("Campaign type")
        table.add_column("Routed to (GET /v1/routing)")
        table.add_column("Why")
        table.add_column("Received by (counted at the SMTP servers)")
        for row in step.rows:
            table.add_row(
                row.campaign_type.value,
                row.expected_server or "-",
                row.via or "-",
                ", ".join(row.received_by) or "nobody",
            )
        console.print(table)
        counts = ", ".join(f"{name}: {count}" for name, count in step.counts.items())
        console.print(f"Messages per server: {counts}")
        for name, reason in step.idle:
            console.print(f"Sends nothing: {name} ({reason})")
        for refusal in step.refusals:
            console.print(
                f"Refused, as the rules require: {refusal.request} -> {refusal.status} "
                f"{refusal.code}: {refusal.message}"
            )
        console.print()
