"""`postyard demo`: the routing example of the design brief, on real SMTP servers.

The demo drives the product the way a user would, through the REST API: a
person, a segment, and in each step one real campaign of each of the four
types, each started the way that type starts (the person entering the segment,
an event, a newsletter send, a broadcast trigger). It reads its table of
results from what each local SMTP server actually received, never from the
routing code's own answer: if routing and delivery disagreed, the demo would
show it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.delivery.worker import Worker
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import CampaignType, Plan
from postyard.secretbox import secret_box
from postyard.services.jobs import Jobs
from postyard.services.runtime import Runtime
from postyard.services.workspaces import create_workspace

SUBJECT_PREFIX = "Postyard demo: "
READER = "reader"
IN_THIS_ROUND = {"attribute": {"field": "demo_round", "operator": "exists"}}


@dataclass(frozen=True)
class Row:
    """One campaign type in one step: where the API said it goes, where it really went."""

    campaign_type: CampaignType
    expected_server: str | None
    via: str | None
    received_by: list[str]


@dataclass(frozen=True)
class Refusal:
    request: str
    status: int
    code: str
    message: str


@dataclass
class Step:
    title: str
    servers: list[dict[str, Any]]
    rows: list[Row] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    idle: list[tuple[str, str]] = field(default_factory=list)


class Demo:
    """A premium workspace, local SMTP servers, the API in-process, a worker and the jobs."""

    def __init__(self, client: httpx.AsyncClient, worker: Worker, jobs: Jobs) -> None:
        self.client = client
        self.worker = worker
        self.jobs = jobs
        self.smtp: dict[str, LocalSMTPServer] = {}
        self.rounds = 0
        self.segment_id: int | None = None

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else {}

    async def add_server(self, smtp: LocalSMTPServer, role: str) -> dict[str, Any]:
        self.smtp[smtp.name] = smtp
        response = await self.client.post(
            "/v1/smtp_servers",
            json={
                "name": smtp.name,
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "none",
                "role": role,
            },
        )
        response.raise_for_status()
        return response.json()

    async def set_role(self, server: dict[str, Any], role: str) -> Refusal | None:
        response = await self.client.patch(f"/v1/smtp_servers/{server['id']}", json={"role": role})
        if response.status_code == 200:
            return None
        error = response.json()["error"]
        request = f"PATCH {server['name']} role={role}"
        return Refusal(request, response.status_code, error["code"], error["message"])

    async def add_reader(self) -> None:
        """The person every campaign writes to, and the segment they enter in each round."""
        await self.call(
            "PUT", f"/v1/people/{READER}", {"email": "reader@example.com", "first_name": "Reader"}
        )
        segment = await self.call(
            "POST", "/v1/segments", {"name": "In this demo round", "conditions": IN_THIS_ROUND}
        )
        self.segment_id = segment["id"]

    async def start_each_type(self) -> None:
        """One campaign of every type, each started as that type starts, then paused, so
        that the next round's person and event do not start this round's campaigns again."""
        self.rounds += 1
        created = {
            campaign_type: await self.call("POST", "/v1/campaigns", self._campaign(campaign_type))
            for campaign_type in CampaignType
        }
        await self.call("PUT", f"/v1/people/{READER}", {"demo_round": None})
        await self.call("PUT", f"/v1/people/{READER}", {"demo_round": self.rounds})
        await self.call("POST", f"/v1/people/{READER}/events", {"name": "demo_event"})
        await self.call("POST", f"/v1/campaigns/{created[CampaignType.NEWSLETTER]['id']}/send")
        broadcast = created[CampaignType.TRIGGERED_BROADCAST]["id"]
        await self.call("POST", f"/v1/campaigns/{broadcast}/triggers", {"ids": [READER]})
        await asyncio.to_thread(self.jobs.run_due)
        for campaign_type in (CampaignType.SEGMENT_TRIGGERED, CampaignType.EVENT_TRIGGERED):
            await self.call(
                "PATCH", f"/v1/campaigns/{created[campaign_type]['id']}", {"state": "paused"}
            )

    def _campaign(self, campaign_type: CampaignType) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"Demo {campaign_type.label} (round {self.rounds})",
            "type": campaign_type.value,
            "message": {
                "from": "Postyard Demo <demo@example.com>",
                "subject": f"{SUBJECT_PREFIX}{campaign_type.value}",
                "text": f"Hi {{{{ customer.first_name }}}}, a {campaign_type.label} message "
                "from the Postyard demo.\nUnsubscribe: {{ unsubscribe_url }}",
            },
        }
        if campaign_type == CampaignType.SEGMENT_TRIGGERED:
            body |= {"trigger": {"segment_id": self.segment_id}, "state": "active"}
        elif campaign_type == CampaignType.EVENT_TRIGGERED:
            body |= {"trigger": {"event_name": "demo_event"}, "state": "active"}
        elif campaign_type == CampaignType.NEWSLETTER:
            body |= {"audience": {"segment_id": self.segment_id}}
        else:
            body |= {"state": "active"}
        return body

    async def send_each_type(self, title: str) -> Step:
        """A round of the four campaign types, delivered, then counted at each server."""
        for smtp in self.smtp.values():
            smtp.clear()
        routing = await self.call("GET", "/v1/routing")
        await self.start_each_type()
        await self.worker.drain(timeout=30)
        received: dict[str, list[str]] = {t.value: [] for t in CampaignType}
        for name, smtp in self.smtp.items():
            for message in smtp.messages:
                received[(message.subject or "").removeprefix(SUBJECT_PREFIX)].append(name)
        servers = (await self.call("GET", "/v1/smtp_servers"))["data"]
        step = Step(title, servers)
        step.rows = [
            Row(
                CampaignType(route["campaign_type"]),
                route["smtp_server_name"],
                route["via"],
                received[route["campaign_type"]],
            )
            for route in routing["routes"]
        ]
        step.idle = [
            (idle["smtp_server_name"], idle["reason"]) for idle in routing["unused_servers"]
        ]
        step.counts = {name: len(smtp.messages) for name, smtp in self.smtp.items()}
        return step


@contextmanager
def _running(*servers: LocalSMTPServer) -> Iterator[None]:
    with ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield


async def run_demo(workdir: Path | None = None) -> list[Step]:
    """Run the three steps of the example; returns what each server received in each."""
    with tempfile.TemporaryDirectory(prefix="postyard-demo-") as scratch:
        directory = workdir or Path(scratch)
        url = f"sqlite:///{directory / 'demo.db'}"
        upgrade(url)
        settings = Settings(
            database_url=url,
            secret_key=Fernet.generate_key().decode(),
            retry_base_seconds=0.2,
            worker_poll_seconds=0.05,
        )
        database = Database(url)
        try:
            return [
                *await _three_servers(settings, database),
                await _five_servers(settings, database),
            ]
        finally:
            database.dispose()


@contextmanager
def _workspace(settings: Settings, database: Database, name: str) -> Iterator[Demo]:
    with database.session() as session:
        workspace = create_workspace(session, name, Plan.PREMIUM)
    app = create_app(settings, database)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://postyard.demo",
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    jobs = Jobs(database, Runtime(settings, secret_box(settings)))
    yield Demo(client, Worker(database, settings), jobs)


async def _three_servers(settings: Settings, database: Database) -> list[Step]:
    smtp = [LocalSMTPServer(name=name) for name in ("smtp-main", "smtp-events", "smtp-news")]
    with _running(*smtp), _workspace(settings, database, "Three servers") as demo:
        async with demo.client:
            await demo.add_reader()
            await demo.add_server(smtp[0], "all_emails")
            await demo.add_server(smtp[1], "event_triggered")
            news = await demo.add_server(smtp[2], "newsletters")
            first = await demo.send_each_type(
                "Three servers: #1 All Emails, #2 Event Triggered, #3 Newsletters"
            )
            refusal = await demo.set_role(news, "none")
            if refusal is not None:
                raise RuntimeError(f"the demo could not set smtp-news to None: {refusal}")
            second = await demo.send_each_type("Server #3 set to None: newsletters fall back to #1")
    return [first, second]


async def _five_servers(settings: Settings, database: Database) -> Step:
    roles = {
        "smtp-main": "all_emails",
        "smtp-segments": "segment_triggered",
        "smtp-events": "event_triggered",
        "smtp-news": "newsletters",
        "smtp-broadcasts": "triggered_broadcasts",
    }
    smtp = [LocalSMTPServer(name=name) for name in roles]
    with _running(*smtp), _workspace(settings, database, "Five servers") as demo:
        async with demo.client:
            await demo.add_reader()
            added = [await demo.add_server(server, roles[server.name]) for server in smtp]
            step = await demo.send_each_type(
                "Five servers, four specific roles: All Emails sends nothing"
            )
            for role in ("none", "newsletters"):
                refusal = await demo.set_role(added[0], role)
                if refusal is not None:
                    step.refusals.append(refusal)
    return step
