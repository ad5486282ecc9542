"""Random sequences of SMTP server changes through the real API keep the routing rules.

A Hypothesis state machine creates (with and without a role, with and without a
position), re-roles, deletes and reorders the SMTP servers of a fresh workspace on
the standard or the premium plan, all through `/v1/smtp_servers` on a real database.
The test keeps a model of its own (plain lists, no `postyard.routing`) that says what
each step must do; after every step it reads the workspace back through the API and
checks:

- the stored servers are exactly the model's (ids, names, roles, positions 1..n);
- R3: while any server exists, at least one is `all_emails`;
- R4: each specific role is held at most once;
- R1: no more servers than the plan allows;
- R5: `GET /v1/routing` sends every campaign type to the server holding its role,
  else to the first `all_emails` server by position (computed here, independently);
- a refused step answered with the status and code the rules name (`plan_limit` 403,
  `fallback_required` 409, `role_taken` 409, and `name_taken`, `not_found`,
  `invalid_request` for the other refusals) and left `GET /v1/smtp_servers` byte for
  byte as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

# Written out here rather than imported: the test states the rules on its own.
CAPS = {"standard": 1, "premium": 20}
SPECIFIC = {
    "segment_triggered": "segment_triggered",
    "event_triggered": "event_triggered",
    "newsletter": "newsletters",
    "triggered_broadcast": "triggered_broadcasts",
}
ROLES = ["all_emails", "none", *SPECIFIC.values()]
S = "/v1/smtp_servers"

roles = st.sampled_from(ROLES)
optional_roles = st.none() | roles


@dataclass
class Modelled:
    id: int
    name: str
    role: str


class Refused(Exception):
    """What the model expects a step to be refused with."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


class Client:
    """One workspace's view of the shared TestClient (one event loop for all the runs)."""

    def __init__(self, client: TestClient, api_key: str) -> None:
        self.client = client
        self.auth = {"Authorization": f"Bearer {api_key}"}

    def get(self, url: str) -> httpx.Response:
        return self.client.get(url, headers=self.auth)

    def post(self, url: str, json: Any) -> httpx.Response:
        return self.client.post(url, json=json, headers=self.auth)

    def patch(self, url: str, json: Any) -> httpx.Response:
        return self.client.patch(url, json=json, headers=self.auth)

    def delete(self, url: str) -> httpx.Response:
        return self.client.delete(url, headers=self.auth)


class RoutingMachine(RuleBasedStateMachine):
    """One workspace per run; `shared_client` and `database` are set by the test's fixture."""

    shared_client: ClassVar[TestClient]
    database: ClassVar[Database]
    workspace_numbers: ClassVar[Iterator[int]] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.client: Client | None = None
        self.plan = "premium"
        self.servers: list[Modelled] = []  # in position order
        self.names = (f"smtp-{n}" for n in itertools.count(1))
        self.gone: list[int] = []

    # --- set-up -------------------------------------------------------------------------------

    # Premium more often: with one server allowed, a standard workspace soon has little to do.
    @initialize(plan=st.sampled_from(["premium", "standard", "premium"]))
    def workspace(self, plan: str) -> None:
        self.plan = plan
        with self.database.session() as session:
            created = create_workspace(session, f"fuzz-{next(self.workspace_numbers)}", Plan(plan))
        self.client = Client(self.shared_client, created.api_key)

    # --- the model ----------------------------------------------------------------------------

    def expect_create(self, name: str, role: str | None) -> str:
        """The role the new server gets, or Refused as the rules name it (in their order)."""
        if len(self.servers) >= CAPS[self.plan]:
            raise Refused(403, "plan_limit")
        if any(s.name == name for s in self.servers):
            raise Refused(409, "name_taken")
        role = role or ("none" if self.servers else "all_emails")
        self.expect_roles([*(s.role for s in self.servers), role], role)
        return role

    def expect_roles(self, after: list[str], changed: str) -> None:
        """R4 then R3 on the roles the workspace would hold after a change."""
        if changed in SPECIFIC.values() and after.count(changed) > 1:
            raise Refused(409, "role_taken")
        if after and "all_emails" not in after:
            raise Refused(409, "fallback_required")

    # --- requests -----------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        assert self.client is not None
        response = self.client.get(S)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def attempt(self, expected: Refused | None, request: Any) -> httpx.Response:
        """Send a change; if the model expects a refusal, check it and that nothing moved."""
        before = self.listing() if expected is not None else None
        response: httpx.Response = request()
        event(f"refused: {expected.code}" if expected else "accepted")
        if expected is None:
            assert response.status_code < 300, response.text
            return response
        assert response.status_code == expected.status, response.text
        body = response.json()
        assert set(body) == {"error"}, body
        assert body["error"]["code"] == expected.code, body
        assert body["error"]["message"], body
        assert self.listing() == before, "a refused change altered the stored servers"
        return response

    # --- rules --------------------------------------------------------------------------------

    @precondition(lambda self: self.client is not None)
    @rule(
        role=optional_roles,
        position=st.none() | st.integers(min_value=1, max_value=23),
        reuse_name=st.booleans(),
        data=st.data(),
    )
    def create(
        self, role: str | None, position: int | None, reuse_name: bool, data: st.DataObject
    ) -> None:
        assert self.client is not None
        if reuse_name and self.servers:
            name = data.draw(st.sampled_from([s.name for s in self.servers]), label="name")
        else:
            name = next(self.names)
        body: dict[str, Any] = {"name": name, "host": "smtp.example.com"}
        if role is not None:
            body["role"] = role
        if position is not None:
            body["position"] = position
        try:
            given_role, expected = self.expect_create(name, role), None
        except Refused as refused:
            given_role, expected = None, refused
        response = self.attempt(expected, lambda: self.client.post(S, json=body))
        if expected is not None:
            return
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["role"] == given_role
        server = Modelled(created["id"], name, given_role)
        assert server.id not in self.gone, "a deleted server's id was given out again"
        index = len(self.servers) if position is None else min(position - 1, len(self.servers))
        self.servers.insert(index, server)
        assert created["position"] == index + 1

    @precondition(lambda self: self.client is not None and len(self.servers) < CAPS[self.plan])
    @rule(count=st.integers(min_value=1, max_value=4) | st.just(20))
    def add_several(self, count: int) -> None:
        """Up to `count` servers with the default role, stopping at the plan's cap, so that
        long sequences reach the premium cap too."""
        assert self.client is not None
        for _ in range(min(count, CAPS[self.plan] - len(self.servers))):
            role = "none" if self.servers else "all_emails"
            name = next(self.names)
            response = self.client.post(S, json={"name": name, "host": "smtp.example.com"})
            assert response.status_code == 201, response.text
            assert response.json()["role"] == role
            self.servers.append(Modelled(response.json()["id"], name, role))
            assert self.servers[-1].id not in self.gone, "a deleted server's id was given out again"

    @precondition(lambda self: bool(self.servers))
    @rule(data=st.data(), role=roles)
    def change_role(self, data: st.DataObject, role: str) -> None:
        assert self.client is not None
        server = data.draw(st.sampled_from(self.servers), label="server")
        try:
            self.expect_roles([role if s is server else s.role for s in self.servers], role)
            expected = None
        except Refused as refused:
            expected = refused
        response = self.attempt(
            expected, lambda: self.client.patch(f"{S}/{server.id}", json={"role": role})
        )
        if expected is None:
            assert response.json()["role"] == role
            server.role = role

    @precondition(lambda self: bool(self.servers))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        assert self.client is not None
        server = data.draw(st.sampled_from(self.servers), label="server")
        remaining = [s.role for s in self.servers if s is not server]
        expected = (
            Refused(409, "fallback_required")
            if remaining and "all_emails" not in remaining
            else None
        )
        response = self.attempt(expected, lambda: self.client.delete(f"{S}/{server.id}"))
        if expected is None:
            assert response.status_code == 204, response.text
            self.servers.remove(server)
            self.gone.append(server.id)

    @precondition(lambda self: bool(self.servers))
    @rule(data=st.data(), position=st.integers(min_value=1, max_value=23))
    def reorder(self, data: st.DataObject, position: int) -> None:
        assert self.client is not None
        server = data.draw(st.sampled_from(self.servers), label="server")
        response = self.attempt(
            None, lambda: self.client.patch(f"{S}/{server.id}", json={"position": position})
        )
        self.servers.remove(server)
        index = min(position - 1, len(self.servers))
        self.servers.insert(index, server)
        assert response.json()["position"] == index + 1

    @precondition(lambda self: self.client is not None)
    @rule(
        data=st.data(),
        action=st.sampled_from(["role", "position", "delete"]),
        body=st.none()
        | st.sampled_from(
            [
                {"role": "fallback"},
                {"role": None},
                {"position": 0},
                {"position": "1"},
                {"position": None},
                {"role": "all_emails", "priority": 1},
            ]
        ),
    )
    def refused_before_the_rules(
        self, data: st.DataObject, action: str, body: dict[str, Any] | None
    ) -> None:
        """A deleted (or never created) id is a 404, a malformed PATCH body a 422; either
        way nothing changes."""
        assert self.client is not None
        if body is not None:
            server_id = (
                data.draw(st.sampled_from(self.servers), label="server").id if self.servers else 1
            )
            self.attempt(
                Refused(422, "invalid_request"),
                lambda: self.client.patch(f"{S}/{server_id}", json=body),
            )
            return
        server_id = data.draw(st.sampled_from([*self.gone, 2**31 - 1]), label="missing id")
        url = f"{S}/{server_id}"
        request = {
            "role": lambda: self.client.patch(url, json={"role": "all_emails"}),
            "position": lambda: self.client.patch(url, json={"position": 1}),
            "delete": lambda: self.client.delete(url),
        }[action]
        self.attempt(Refused(404, "not_found"), request)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        if self.client is None:
            return
        stored = self.listing()
        # The stored state is the model's, in position order, positions 1..n.
        assert [(s["id"], s["name"], s["role"]) for s in stored] == [
            (s.id, s.name, s.role) for s in self.servers
        ]
        assert [s["position"] for s in stored] == list(range(1, len(stored) + 1))
        held = [s["role"] for s in stored]
        # R1
        assert len(stored) <= CAPS[self.plan]
        # R3
        if stored:
            assert "all_emails" in held
        # R4
        for role in SPECIFIC.values():
            assert held.count(role) <= 1, f"{role} held {held.count(role)} times"
        # R5, computed here from what the API stored.
        response = self.client.get("/v1/routing")
        assert response.status_code == 200, response.text
        routes = {line["campaign_type"]: line for line in response.json()["routes"]}
        assert set(routes) == set(SPECIFIC)
        primary = next((s for s in stored if s["role"] == "all_emails"), None)
        ids = {s["id"] for s in stored}
        for campaign_type, role in SPECIFIC.items():
            line = routes[campaign_type]
            holder = next((s for s in stored if s["role"] == role), None)
            if holder is not None:
                expected = (holder["id"], "specific")
            elif primary is not None:
                expected = (primary["id"], "fallback")
            else:
                expected = (None, None)  # R7: no custom server, no default relay here
            assert (line["smtp_server_id"], line["via"]) == expected, (campaign_type, stored)
            if line["smtp_server_id"] is not None:
                assert line["smtp_server_id"] in ids
        used = {line["smtp_server_id"] for line in routes.values()}
        unused = [line["smtp_server_id"] for line in response.json()["unused_servers"]]
        assert unused == [s["id"] for s in stored if s["id"] not in used]


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    """Each run acts in a workspace of its own: one database per module and backend."""
    return module_database_url


@pytest.fixture
def machine_app(settings: Settings, database: Database) -> Iterator[None]:
    with TestClient(create_app(settings, database)) as client:
        RoutingMachine.shared_client = client
        RoutingMachine.database = database
        yield


# SQLite carries the bulk of the examples; PostgreSQL gets a shorter run of the same machine.
EXAMPLES = {"sqlite": 50, "postgresql": 10}


@pytest.mark.usefixtures("machine_app")
def test_routing_rules_hold_under_random_changes(database: Database) -> None:
    backend = database.engine.dialect.name
    run_state_machine_as_test(
        RoutingMachine,
        settings=settings(
            parent=settings.get_profile("postyard-fuzz"),
            max_examples=EXAMPLES[backend],
            stateful_step_count=30,
        ),
    )
