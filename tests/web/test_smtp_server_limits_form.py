"""The server forms carry the limits across workers: each field explained, typed values
stored, a blank one clearing the limit, a bad one refused next to its field, and the
list of servers showing them."""

from __future__ import annotations

import re

from tests.web.conftest import Browserless

SERVER = {
    "name": "smtp-main",
    "host": "smtp.example.com",
    "port": "587",
    "security": "starttls",
    "max_connections": "4",
    "role": "",
}


def test_the_add_form_explains_both_limits(web: Browserless) -> None:
    page = web.get("/smtp/new").text
    assert 'name="rate_limit_per_second"' in page
    assert 'name="max_messages_per_connection"' in page
    assert "across all workers" in page
    assert "open a new one" in page


def test_limits_typed_in_the_forms_are_stored_shown_and_cleared(web: Browserless) -> None:
    response = web.submit(
        "/smtp/new", **SERVER, rate_limit_per_second="200", max_messages_per_connection="50"
    )
    assert response.status_code == 303, response.text
    server_id = re.search(r"server=(\d+)", response.headers["location"])[1]  # type: ignore[index]
    listing = web.get("/smtp").text
    assert "4 connections, 200 messages/s, 50 messages per connection" in listing
    edit = web.get(f"/smtp/{server_id}").text
    assert 'name="rate_limit_per_second" type="text" value="200"' in edit

    response = web.submit(
        f"/smtp/{server_id}", **SERVER, rate_limit_per_second="", max_messages_per_connection="50"
    )
    assert response.status_code == 303, response.text
    assert "4 connections, 50 messages per connection" in web.get("/smtp").text


def test_a_bad_limit_is_refused_next_to_its_field(web: Browserless) -> None:
    response = web.submit(
        "/smtp/new", **SERVER, rate_limit_per_second="0", max_messages_per_connection="many"
    )
    assert response.status_code == 422
    assert "Messages per second must be a number above 0" in response.text
    assert "Messages per connection must be a whole number" in response.text
