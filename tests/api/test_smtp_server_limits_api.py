"""A server's limits across workers over the API: set, returned, cleared with null, and
refused (422, naming the field) when out of range."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

SERVER = {"name": "smtp-main", "host": "smtp.example.com", "port": 587}


def create(api: TestClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/smtp_servers", json={**SERVER, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_limits_are_stored_returned_and_cleared(api: TestClient) -> None:
    created = create(api, rate_limit_per_second=12.5, max_messages_per_connection=100)
    assert (created["rate_limit_per_second"], created["max_messages_per_connection"]) == (12.5, 100)

    fetched = api.get(f"/v1/smtp_servers/{created['id']}").json()
    assert (fetched["rate_limit_per_second"], fetched["max_messages_per_connection"]) == (12.5, 100)

    patched = api.patch(
        f"/v1/smtp_servers/{created['id']}",
        json={"rate_limit_per_second": None, "max_messages_per_connection": 3},
    ).json()
    assert (patched["rate_limit_per_second"], patched["max_messages_per_connection"]) == (None, 3)


def test_a_new_server_has_no_rate_or_per_connection_limit(api: TestClient) -> None:
    created = create(api)
    assert (created["rate_limit_per_second"], created["max_messages_per_connection"]) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_limit_per_second", 0),
        ("rate_limit_per_second", -1),
        ("rate_limit_per_second", 10_001),
        ("rate_limit_per_second", "fast"),
        ("max_messages_per_connection", 0),
        ("max_messages_per_connection", 2.5),
        ("max_messages_per_connection", 10**12),
    ],
)
def test_out_of_range_limits_are_refused_naming_the_field(
    api: TestClient, field: str, value: Any
) -> None:
    for response in (
        api.post("/v1/smtp_servers", json={**SERVER, field: value}),
        api.patch(
            f"/v1/smtp_servers/{create(api, name=f'x-{field}-{value}')['id']}", json={field: value}
        ),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert field in error["message"]
