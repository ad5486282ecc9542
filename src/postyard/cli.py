"""The `postyard` command."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from postyard.config import ConfigError, Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.routing import Plan

app = typer.Typer(
    help="Postyard: lifecycle email routed to your own SMTP servers.", no_args_is_help=True
)
workspace_app = typer.Typer(help="Create workspaces and their API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(db_app, name="db")

console = Console()

GRACE_HELP = (
    "On SIGTERM or Ctrl+C, seconds that SMTP transactions under way may take to finish; "
    "any still running then are handed back to the queue."
)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        console.print(f"[red]Configuration error:[/red] {error}")
        raise typer.Exit(2) from None


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8025,
    grace: Annotated[float, typer.Option(min=0, help=GRACE_HELP)] = 20.0,
) -> None:
    """Run the API, the web UI and a delivery worker in one process; GET /metrics shows the
    worker's counters."""
    import uvicorn

    from postyard.api.app import create_app

    _configure_logging()
    settings = _settings()
    upgrade(settings.database_url)
    # uvicorn turns SIGTERM into the app's shutdown, which stops the worker gracefully.
    uvicorn.run(
        create_app(settings, run_worker=True, grace_seconds=grace),
        host=host,
        port=port,
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
) -> None:
    """Run a delivery worker and the background jobs (newsletter sends, broadcast triggers,
    time-window segments); start as many as the load needs. SIGTERM stops it gracefully."""
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

        for signum in (signal.SIGINT, signal.SIGTERM):
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
        try:
            await asyncio.gather(
                Worker(database, settings, box=box, metrics=metrics, grace_seconds=grace).run(stop),
                Jobs(database, Runtime(settings, box)).run(stop),
            )
        finally:
            if exporter is not None:
                exporter.shutdown()
            database.dispose()

    asyncio.run(run())


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
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            created = create_workspace(session, name, plan)
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps({"workspace_id": created.workspace_id, "api_key": created.api_key}))
        return
    console.print(f"Workspace [bold]{name}[/bold] (id {created.workspace_id}, {plan.value} plan)")
    console.print(f"API key: [bold]{created.api_key}[/bold]")
    console.print("Keep the key now: Postyard stores only its hash and cannot show it again.")


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
