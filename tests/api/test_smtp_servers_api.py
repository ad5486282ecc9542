"""`/v1/smtp_servers` through the real app: fields, secrets, and the routing rules R1-R4.

Every rule is checked at the HTTP surface (status, error code, the server the
message names) and, for refused changes, against the stored state: a refusal
must leave the workspace exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import SmtpServer
from postyard.secretbox import secret_box

PASSWORD = "s3cret-Pa55word!with~odd%chars"
ALL_ROLES = [
    "all_emails",
    "none",
    "segment_triggered",
    "event_triggered",
    "newsletters",
    "triggered_broadcasts",
]
SPECIFIC_ROLES = ALL_ROLES[2:]


def create(client: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    """Create a server that must be accepted; returns the response body."""
    response = client.post(
        "/v1/smtp_servers", json={"name": name, "host": "smtp.example.com", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def servers(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/v1/smtp_servers")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def names_in_order(client: TestClient) -> list[str]:
    return [server["name"] for server in servers(client)]


def error(response: httpx.Response, status: int, code: str) -> str:
    """Assert the error status and body shape; return the message for further checks."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body["error"]["message"]


def routes(client: TestClient) -> dict[str, tuple[str | None, str | None]]:
    """campaign type -> (server name, via), from GET /v1/routing."""
    response = client.get("/v1/routing")
    assert response.status_code == 200, response.text
    return {
        line["campaign_type"]: (line["smtp_server_name"], line["via"])
        for line in response.json()["routes"]
    }


def unused(client: TestClient) -> dict[str, str]:
    """server name -> reason it sends nothing, from GET /v1/routing."""
    return {
        line["smtp_server_name"]: line["reason"]
        for line in client.get("/v1/routing").json()["unused_servers"]
    }


def stored_password(database: Database, server_id: int) -> str | None:
    with database.session() as session:
        return session.scalars(
            select(SmtpServer.password_encrypted).where(SmtpServer.id == server_id)
        ).one()


# --- fields -----------------------------------------------------------------------------------


def test_create_returns_and_stores_every_field(api: TestClient, ca_pem: str) -> None:
    body = {
        "name": "smtp-main",
        "host": "mail.example.net",
        "port": 2525,
        "security": "tls",
        "username": "mailer",
        "password": PASSWORD,
        "ca_bundle": ca_pem,
        "role": "all_emails",
        "position": 1,
        "max_connections": 7,
    }
    response = api.post("/v1/smtp_servers", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    expected = {k: v for k, v in body.items() if k != "password"} | {"has_password": True}
    assert {k: created[k] for k in expected} == expected
    assert isinstance(created["id"], int)
    assert created["created_at"].endswith("+00:00")
    assert "password" not in created
    assert api.get(f"/v1/smtp_servers/{created['id']}").json() == created
    assert servers(api) == [created]


def test_create_fills_in_the_documented_defaults(api: TestClient) -> None:
    created = create(api, "smtp-main")
    assert {k: created[k] for k in created if k not in {"id", "created_at", "updated_at"}} == {
        "name": "smtp-main",
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": None,
        "has_password": False,
        "ca_bundle": None,
        "role": "all_emails",
        "position": 1,
        "max_connections": 4,
        "rate_limit_per_second": None,
        "max_messages_per_connection": None,
    }


def test_create_normalises_name_and_host(api: TestClient) -> None:
    created = create(api, "  smtp-main  ", host=" SMTP.Example.COM. ")
    assert (created["name"], created["host"]) == ("smtp-main", "smtp.example.com")


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("name", "renamed"),
        ("host", "mx2.example.org"),
        ("port", 465),
        ("security", "tls"),
        ("username", "someone"),
        ("username", None),
        ("ca_bundle", "PEM"),
        ("ca_bundle", None),
        ("max_connections", 100),
    ],
)
def test_patch_changes_only_the_field_sent(
    api: TestClient, ca_pem: str, field_name: str, value: Any
) -> None:
    value = ca_pem if value == "PEM" else value
    before = create(api, "smtp-main", username="mailer", ca_bundle=ca_pem, password=PASSWORD)
    response = api.patch(f"/v1/smtp_servers/{before['id']}", json={field_name: value})
    assert response.status_code == 200, response.text
    after = response.json()
    assert after[field_name] == value
    unchanged = set(before) - {field_name, "updated_at"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert api.get(f"/v1/smtp_servers/{before['id']}").json() == after


def test_patch_with_empty_body_changes_nothing(api: TestClient) -> None:
    before = create(api, "smtp-main")
    response = api.patch(f"/v1/smtp_servers/{before['id']}", json={})
    assert response.status_code == 200, response.text
    assert {k: v for k, v in response.json().items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }


def test_delete_removes_the_server(api: TestClient) -> None:
    server = create(api, "smtp-main")
    response = api.delete(f"/v1/smtp_servers/{server['id']}")
    assert response.status_code == 204
    assert response.content == b""
    error(api.get(f"/v1/smtp_servers/{server['id']}"), 404, "not_found")
    error(api.delete(f"/v1/smtp_servers/{server['id']}"), 404, "not_found")
    assert servers(api) == []


def test_get_missing_server_is_not_found(api: TestClient) -> None:
    message = error(api.get("/v1/smtp_servers/424242"), 404, "not_found")
    assert "424242" in message
    error(api.patch("/v1/smtp_servers/424242", json={"port": 25}), 404, "not_found")


# --- the password ----------------------------------------------------------------------------


def test_password_never_appears_in_any_response(api: TestClient) -> None:
    bodies: list[str] = []

    def seen(response: httpx.Response) -> httpx.Response:
        bodies.append(response.text)
        return response

    first = seen(
        api.post(
            "/v1/smtp_servers",
            json={"name": "a", "host": "smtp.example.com", "password": PASSWORD},
        )
    ).json()
    assert first["has_password"] is True
    seen(api.get(f"/v1/smtp_servers/{first['id']}"))
    seen(api.get("/v1/smtp_servers"))
    seen(api.patch(f"/v1/smtp_servers/{first['id']}", json={"port": 25}))
    seen(api.patch(f"/v1/smtp_servers/{first['id']}", json={"password": PASSWORD + "2"}))
    seen(api.get("/v1/routing"))
    # refusals that carry the password in their request
    seen(
        api.post(
            "/v1/smtp_servers",
            json={"name": "a", "host": "smtp.example.com", "password": PASSWORD},
        )
    )
    seen(
        api.post(
            "/v1/smtp_servers",
            json={"name": "b", "host": "bad host", "password": PASSWORD},
        )
    )
    seen(api.patch(f"/v1/smtp_servers/{first['id']}", json={"password": PASSWORD, "x": 1}))
    seen(api.patch(f"/v1/smtp_servers/{first['id']}", json={"password": [PASSWORD]}))
    assert len(bodies) == 10
    for text in bodies:
        assert PASSWORD not in text
        assert '"password"' not in text


def test_password_is_stored_encrypted_and_recoverable(
    api: TestClient, database: Database, settings: Settings
) -> None:
    server = create(api, "smtp-main", password=PASSWORD)
    token = stored_password(database, server["id"])
    assert token is not None
    assert token != PASSWORD
    assert PASSWORD not in token
    assert secret_box(settings).decrypt(token) == PASSWORD


def test_patch_password_null_clears_it(api: TestClient, database: Database) -> None:
    server = create(api, "smtp-main", username="mailer", password=PASSWORD)
    response = api.patch(f"/v1/smtp_servers/{server['id']}", json={"password": None})
    assert response.status_code == 200, response.text
    assert response.json()["has_password"] is False
    assert response.json()["username"] == "mailer"
    assert stored_password(database, server["id"]) is None


def test_patch_password_replaces_it(
    api: TestClient, database: Database, settings: Settings
) -> None:
    server = create(api, "smtp-main", password=PASSWORD)
    response = api.patch(f"/v1/smtp_servers/{server['id']}", json={"password": "another one"})
    assert response.status_code == 200, response.text
    assert response.json()["has_password"] is True
    token = stored_password(database, server["id"])
    assert token is not None
    assert secret_box(settings).decrypt(token) == "another one"


def test_patch_without_password_keeps_it(
    api: TestClient, database: Database, settings: Settings
) -> None:
    server = create(api, "smtp-main", password=PASSWORD)
    response = api.patch(f"/v1/smtp_servers/{server['id']}", json={"username": "bob"})
    assert response.json()["has_password"] is True
    token = stored_password(database, server["id"])
    assert token is not None
    assert secret_box(settings).decrypt(token) == PASSWORD


# --- R1: plan limits -------------------------------------------------------------------------


def test_standard_plan_refuses_a_second_server(make_api: Any) -> None:
    client = make_api("standard")
    create(client, "only")
    before = servers(client)
    message = error(
        client.post("/v1/smtp_servers", json={"name": "second", "host": "smtp.example.com"}),
        403,
        "plan_limit",
    )
    assert "standard" in message
    assert servers(client) == before


def test_standard_plan_may_replace_its_server_after_deleting_it(make_api: Any) -> None:
    client = make_api("standard")
    first = create(client, "first")
    assert client.delete(f"/v1/smtp_servers/{first['id']}").status_code == 204
    second = create(client, "second")
    assert second["role"] == "all_emails"


def test_premium_plan_allows_twenty_servers_then_refuses(api: TestClient) -> None:
    for number in range(1, 21):
        create(api, f"smtp-{number}")
    before = servers(api)
    assert [s["position"] for s in before] == list(range(1, 21))
    message = error(
        api.post("/v1/smtp_servers", json={"name": "smtp-21", "host": "smtp.example.com"}),
        403,
        "plan_limit",
    )
    assert "20" in message
    assert servers(api) == before


def test_plan_limit_is_checked_before_other_rules(make_api: Any) -> None:
    """Over the cap the answer is `plan_limit`, even for a request that would also clash."""
    client = make_api("standard")
    create(client, "only", role="all_emails")
    error(
        client.post(
            "/v1/smtp_servers",
            json={"name": "only", "host": "smtp.example.com", "role": "all_emails"},
        ),
        403,
        "plan_limit",
    )


# --- R2: default roles -----------------------------------------------------------------------


def test_first_server_defaults_to_all_emails_and_later_ones_to_none(api: TestClient) -> None:
    assert create(api, "one")["role"] == "all_emails"
    assert create(api, "two")["role"] == "none"
    assert create(api, "three")["role"] == "none"


@pytest.mark.parametrize("role", ["all_emails", "event_triggered"])
def test_a_given_role_overrides_the_default_for_later_servers(api: TestClient, role: str) -> None:
    create(api, "first")
    assert create(api, "second", role=role)["role"] == role


def test_defaults_follow_the_current_servers_not_history(api: TestClient) -> None:
    """After the last server is deleted, the next one is again the first: All Emails."""
    first = create(api, "first")
    assert api.delete(f"/v1/smtp_servers/{first['id']}").status_code == 204
    assert create(api, "again")["role"] == "all_emails"


# --- R3: a fallback always exists ------------------------------------------------------------


@pytest.mark.parametrize("role", ["none", "newsletters"])
def test_first_server_with_a_role_other_than_all_emails_is_refused(
    api: TestClient, role: str
) -> None:
    message = error(
        api.post(
            "/v1/smtp_servers",
            json={"name": "lonely", "host": "smtp.example.com", "role": role},
        ),
        409,
        "fallback_required",
    )
    assert "lonely" in message
    assert servers(api) == []


@pytest.mark.parametrize("role", ["none", "triggered_broadcasts"])
def test_patching_the_only_all_emails_server_away_is_refused(api: TestClient, role: str) -> None:
    main = create(api, "smtp-main")
    create(api, "smtp-other", role="none")
    before = servers(api)
    message = error(
        api.patch(f"/v1/smtp_servers/{main['id']}", json={"role": role}), 409, "fallback_required"
    )
    assert "smtp-main" in message
    assert f"id {main['id']}" in message
    assert servers(api) == before


def test_patching_the_only_server_away_from_all_emails_is_refused(api: TestClient) -> None:
    main = create(api, "smtp-main")
    message = error(
        api.patch(f"/v1/smtp_servers/{main['id']}", json={"role": "none"}),
        409,
        "fallback_required",
    )
    assert "smtp-main" in message
    assert servers(api) == [main]


def test_deleting_the_only_all_emails_server_is_refused_while_others_exist(
    api: TestClient,
) -> None:
    main = create(api, "smtp-main")
    create(api, "smtp-news", role="newsletters")
    before = servers(api)
    message = error(api.delete(f"/v1/smtp_servers/{main['id']}"), 409, "fallback_required")
    assert "smtp-main" in message
    assert f"id {main['id']}" in message
    assert servers(api) == before


def test_deleting_the_last_remaining_server_is_allowed(api: TestClient) -> None:
    main = create(api, "smtp-main")
    assert api.delete(f"/v1/smtp_servers/{main['id']}").status_code == 204
    assert servers(api) == []


def test_an_all_emails_server_may_go_when_another_remains(api: TestClient) -> None:
    first = create(api, "first")
    second = create(api, "second", role="all_emails")
    response = api.patch(f"/v1/smtp_servers/{first['id']}", json={"role": "none"})
    assert response.status_code == 200, response.text
    assert api.delete(f"/v1/smtp_servers/{second['id']}").status_code == 409
    assert api.patch(f"/v1/smtp_servers/{first['id']}", json={"role": "all_emails"}).is_success
    assert api.delete(f"/v1/smtp_servers/{second['id']}").status_code == 204


# --- R4: one server per specific role --------------------------------------------------------


@pytest.mark.parametrize("role", ["segment_triggered", "newsletters"])
def test_creating_a_server_with_a_held_role_is_refused_naming_the_holder(
    api: TestClient, role: str
) -> None:
    create(api, "smtp-main")
    holder = create(api, "smtp-holder", role=role)
    before = servers(api)
    message = error(
        api.post(
            "/v1/smtp_servers",
            json={"name": "smtp-new", "host": "smtp.example.com", "role": role},
        ),
        409,
        "role_taken",
    )
    assert "smtp-holder" in message
    assert f"id {holder['id']}" in message
    assert servers(api) == before


@pytest.mark.parametrize("role", ["event_triggered", "triggered_broadcasts"])
def test_patching_a_server_to_a_held_role_is_refused_naming_the_holder(
    api: TestClient, role: str
) -> None:
    create(api, "smtp-main")
    holder = create(api, "smtp-holder", role=role)
    other = create(api, "smtp-other")
    before = servers(api)
    message = error(
        api.patch(f"/v1/smtp_servers/{other['id']}", json={"role": role}), 409, "role_taken"
    )
    assert "smtp-holder" in message
    assert f"id {holder['id']}" in message
    assert servers(api) == before


def test_a_server_may_be_patched_to_the_specific_role_it_holds(api: TestClient) -> None:
    create(api, "smtp-main")
    news = create(api, "smtp-news", role="newsletters")
    response = api.patch(f"/v1/smtp_servers/{news['id']}", json={"role": "newsletters"})
    assert response.status_code == 200, response.text


def test_a_released_role_may_be_taken(api: TestClient) -> None:
    create(api, "smtp-main")
    news = create(api, "smtp-news", role="newsletters")
    other = create(api, "smtp-other")
    assert api.patch(f"/v1/smtp_servers/{news['id']}", json={"role": "none"}).is_success
    response = api.patch(f"/v1/smtp_servers/{other['id']}", json={"role": "newsletters"})
    assert response.status_code == 200, response.text


def test_several_servers_may_be_all_emails(api: TestClient) -> None:
    for name in ("a", "b", "c"):
        create(api, name, role="all_emails")
    assert [s["role"] for s in servers(api)] == ["all_emails"] * 3


def test_a_refused_patch_changes_none_of_its_fields(api: TestClient) -> None:
    """One field of several breaks a rule: the others are not written either."""
    create(api, "smtp-main")
    create(api, "smtp-news", role="newsletters")
    other = create(api, "smtp-other")
    before = servers(api)
    error(
        api.patch(
            f"/v1/smtp_servers/{other['id']}",
            json={"name": "renamed", "port": 2526, "position": 1, "role": "newsletters"},
        ),
        409,
        "role_taken",
    )
    assert servers(api) == before
    error(
        api.patch(
            f"/v1/smtp_servers/{other['id']}",
            json={"role": "event_triggered", "password": "x", "name": "smtp-news"},
        ),
        409,
        "name_taken",
    )
    assert servers(api) == before


# --- names -----------------------------------------------------------------------------------


def test_a_duplicate_name_is_refused_on_create(api: TestClient) -> None:
    main = create(api, "smtp-main")
    before = servers(api)
    message = error(
        api.post("/v1/smtp_servers", json={"name": " smtp-main ", "host": "other.example.com"}),
        409,
        "name_taken",
    )
    assert "smtp-main" in message
    assert f"id {main['id']}" in message
    assert servers(api) == before


def test_a_duplicate_name_is_refused_on_patch(api: TestClient) -> None:
    create(api, "smtp-main")
    other = create(api, "smtp-other")
    before = servers(api)
    error(
        api.patch(f"/v1/smtp_servers/{other['id']}", json={"name": "smtp-main"}),
        409,
        "name_taken",
    )
    assert servers(api) == before


def test_a_server_may_keep_its_own_name(api: TestClient) -> None:
    main = create(api, "smtp-main")
    response = api.patch(f"/v1/smtp_servers/{main['id']}", json={"name": "smtp-main"})
    assert response.status_code == 200, response.text


# --- positions -------------------------------------------------------------------------------


def test_positions_follow_creation_order(api: TestClient) -> None:
    for name in ("a", "b", "c"):
        create(api, name)
    assert [(s["name"], s["position"]) for s in servers(api)] == [("a", 1), ("b", 2), ("c", 3)]


@pytest.mark.parametrize(
    ("moved", "position", "expected"),
    [
        ("d", 1, ["d", "a", "b", "c"]),
        ("a", 4, ["b", "c", "d", "a"]),
        ("b", 3, ["a", "c", "b", "d"]),
        ("c", 2, ["a", "c", "b", "d"]),
        ("b", 2, ["a", "b", "c", "d"]),
    ],
)
def test_patch_position_reorders_and_renumbers(
    api: TestClient, moved: str, position: int, expected: list[str]
) -> None:
    ids = {name: create(api, name)["id"] for name in ("a", "b", "c", "d")}
    response = api.patch(f"/v1/smtp_servers/{ids[moved]}", json={"position": position})
    assert response.status_code == 200, response.text
    assert response.json()["position"] == expected.index(moved) + 1
    listed = servers(api)
    assert [s["name"] for s in listed] == expected
    assert [s["position"] for s in listed] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (1, ["new", "a", "b"]),
        (2, ["a", "new", "b"]),
        (50, ["a", "b", "new"]),
    ],
)
def test_create_with_position_inserts_and_renumbers(
    api: TestClient, position: int, expected: list[str]
) -> None:
    create(api, "a")
    create(api, "b")
    created = create(api, "new", position=position)
    assert created["position"] == expected.index("new") + 1
    listed = servers(api)
    assert [s["name"] for s in listed] == expected
    assert [s["position"] for s in listed] == [1, 2, 3]


def test_delete_renumbers_the_remaining_servers(api: TestClient) -> None:
    ids = {name: create(api, name)["id"] for name in ("a", "b", "c")}
    assert api.delete(f"/v1/smtp_servers/{ids['b']}").status_code == 204
    assert [(s["name"], s["position"]) for s in servers(api)] == [("a", 1), ("c", 2)]


def test_primary_fallback_follows_position(api: TestClient) -> None:
    create(api, "first", role="all_emails")
    second = create(api, "second", role="all_emails")
    assert set(routes(api).values()) == {("first", "fallback")}
    assert unused(api) == {
        "second": "All Emails, but 'first' comes first and is the primary fallback"
    }
    response = api.patch(f"/v1/smtp_servers/{second['id']}", json={"position": 1})
    assert response.status_code == 200, response.text
    assert set(routes(api).values()) == {("second", "fallback")}
    assert unused(api) == {
        "first": "All Emails, but 'second' comes first and is the primary fallback"
    }


def test_primary_fallback_follows_position_given_at_creation(api: TestClient) -> None:
    create(api, "first")
    create(api, "later", role="all_emails", position=1)
    assert set(routes(api).values()) == {("later", "fallback")}


# --- DESIGN §8, table-driven -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One request against server #`server` (1-based creation number); `None` body: DELETE."""

    server: int
    body: dict[str, Any] | None
    status: int
    code: str | None = None
    names: int | None = None  # the server a refusal must name, if not `server`


@dataclass(frozen=True)
class Scenario:
    roles: list[str]
    steps: list[Step] = field(default_factory=list)
    # campaign type -> (server number, via)
    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    # server number -> reason
    unused: dict[int, str] = field(default_factory=dict)


FIVE = ["all_emails", "segment_triggered", "event_triggered", "newsletters", "triggered_broadcasts"]
ALL_SPECIFIC = {
    "segment_triggered": (2, "specific"),
    "event_triggered": (3, "specific"),
    "newsletter": (4, "specific"),
    "triggered_broadcast": (5, "specific"),
}
EVERY_TYPE_HAS_ITS_OWN = "All Emails, but every campaign type has a server of its own"

SCENARIOS = {
    "three-servers-seed": Scenario(
        roles=["all_emails", "event_triggered", "newsletters"],
        routes={
            "segment_triggered": (1, "fallback"),
            "event_triggered": (2, "specific"),
            "newsletter": (3, "specific"),
            "triggered_broadcast": (1, "fallback"),
        },
    ),
    "three-servers-newsletters-set-to-none": Scenario(
        roles=["all_emails", "event_triggered", "newsletters"],
        steps=[Step(3, {"role": "none"}, 200)],
        routes={
            "segment_triggered": (1, "fallback"),
            "event_triggered": (2, "specific"),
            "newsletter": (1, "fallback"),
            "triggered_broadcast": (1, "fallback"),
        },
        unused={3: "set to None"},
    ),
    "five-servers-all-emails-sends-nothing": Scenario(
        roles=FIVE, routes=ALL_SPECIFIC, unused={1: EVERY_TYPE_HAS_ITS_OWN}
    ),
    "five-servers-all-emails-cannot-change-role": Scenario(
        roles=FIVE,
        steps=[
            Step(1, {"role": "none"}, 409, "fallback_required"),
            *(
                Step(1, {"role": role}, 409, "role_taken", names=FIVE.index(role) + 1)
                for role in SPECIFIC_ROLES
            ),
            Step(1, None, 409, "fallback_required"),
        ],
        routes=ALL_SPECIFIC,
        unused={1: EVERY_TYPE_HAS_ITS_OWN},
    ),
    "five-servers-specific-role-released": Scenario(
        roles=FIVE,
        steps=[Step(4, {"role": "none"}, 200)],
        routes=ALL_SPECIFIC | {"newsletter": (1, "fallback")},
        unused={4: "set to None"},
    ),
    "five-servers-specific-server-deleted": Scenario(
        roles=FIVE,
        steps=[Step(2, None, 204)],
        routes=ALL_SPECIFIC | {"segment_triggered": (1, "fallback")},
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_design_routing_examples(api: TestClient, scenario: Scenario) -> None:
    ids = [create(api, f"smtp-{n}", role=role)["id"] for n, role in enumerate(scenario.roles, 1)]
    for step in scenario.steps:
        path = f"/v1/smtp_servers/{ids[step.server - 1]}"
        before = servers(api)
        response = api.delete(path) if step.body is None else api.patch(path, json=step.body)
        assert response.status_code == step.status, response.text
        if step.code is not None:
            message = error(response, step.status, step.code)
            assert f"'smtp-{step.names or step.server}'" in message
            assert servers(api) == before
    assert routes(api) == {
        campaign_type: (f"smtp-{number}", via)
        for campaign_type, (number, via) in scenario.routes.items()
    }
    assert unused(api) == {f"smtp-{number}": reason for number, reason in scenario.unused.items()}


def test_a_deleted_servers_id_is_never_given_to_a_new_server(api: TestClient) -> None:
    """Deliveries keep the id of the server that carried them: it must not come to name another."""
    create(api, "smtp-main")
    doomed = create(api, "smtp-extra")
    assert api.delete(f"/v1/smtp_servers/{doomed['id']}").status_code == 204

    newcomer = create(api, "smtp-new")

    assert newcomer["id"] > doomed["id"]
    assert api.get(f"/v1/smtp_servers/{doomed['id']}").status_code == 404
