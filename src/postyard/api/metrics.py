"""`GET /metrics`: Prometheus text format, without authentication like most exporters.

It shows counts by SMTP server id and campaign type and the queue's depth and age;
nothing in it names a server's address, a recipient or a secret.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from postyard.metrics import Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # A plain `def`: FastAPI runs it in a thread, so the queue query at scrape time does not
    # hold up the event loop the worker shares in `postyard serve`.
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
