"""The ASGI application: REST API, and in `postyard serve` the delivery worker beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from fastapi import FastAPI

from postyard.api import (
    audit,
    campaigns,
    deliveries,
    keys,
    metrics,
    people,
    routing,
    segments,
    smtp_servers,
    suppressions,
    unsubscribe,
    workspace,
)
from postyard.api.context import AppContext
from postyard.api.errors import ERROR_RESPONSES, install_error_handlers
from postyard.api.limits import BodySizeLimit
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery import outbox
from postyard.delivery.processes import WorkerProcesses
from postyard.delivery.worker import DEFAULT_GRACE_SECONDS, Worker
from postyard.metrics import Metrics
from postyard.secretbox import secret_box
from postyard.services.jobs import Jobs
from postyard.web.ui import install_ui


def create_app(
    settings: Settings,
    database: Database | None = None,
    *,
    run_worker: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    worker_processes: int = 0,
) -> FastAPI:
    """The app; with `run_worker`, delivery and the jobs run beside it, and on shutdown
    in-flight SMTP transactions get `grace_seconds`. Delivery is a worker in this process,
    feeding the app's own metrics, or `worker_processes` processes of their own. Mail this
    process queues (API requests, jobs) wakes the worker(s) at once; mail queued by other
    processes is found by their poll."""
    database = database or Database(settings.database_url)
    context = AppContext(settings=settings, database=database, box=secret_box(settings))
    app_metrics = Metrics().watch_queue(database, context.clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not run_worker:
            yield
            return
        stop = asyncio.Event()
        delivery: Worker | WorkerProcesses
        metrics_dir: TemporaryDirectory[str] | None = None
        if worker_processes:
            metrics_dir = TemporaryDirectory(prefix="postyard-metrics-")
            counters = Path(metrics_dir.name)
            app_metrics.gather_processes(counters)
            delivery = WorkerProcesses(worker_processes, settings, grace_seconds, counters)
        else:
            delivery = Worker(
                database,
                settings,
                box=context.box,
                metrics=app_metrics,
                grace_seconds=grace_seconds,
            )
        forget_wakeup = outbox.when_due(database.engine, delivery.wake)
        tasks = [
            asyncio.create_task(delivery.run(stop), name="delivery"),
            asyncio.create_task(Jobs(database, context.runtime).run(stop), name="jobs"),
        ]
        try:
            yield
        finally:
            forget_wakeup()
            stop.set()
            await asyncio.gather(*tasks)
            if metrics_dir is not None:
                metrics_dir.cleanup()

    app = FastAPI(
        title="Postyard",
        summary="Lifecycle messaging routed to your own SMTP servers by campaign type.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.context = context
    app.state.metrics = app_metrics
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        pages={unsubscribe.PREFIX: unsubscribe.error_page},
    )
    for module in (
        smtp_servers,
        routing,
        deliveries,
        people,
        segments,
        campaigns,
        suppressions,
        keys,
        unsubscribe,
        metrics,
        workspace,
        audit,
    ):
        app.include_router(module.router)
    install_ui(app)
    return app
