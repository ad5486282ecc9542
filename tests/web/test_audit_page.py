"""`/audit` over plain HTTP: the changes of the signed-in workspace, with what each changed."""

from __future__ import annotations

import re
from typing import Any

from tests.web.conftest import Browserless, WebFactory

PASSWORD = "s3cret-Pa55word!web-audit"


def add_server(web: Browserless, name: str, **fields: Any) -> int:
    response = web.post(
        "/v1/smtp_servers",
        json={"name": name, "host": "smtp.example.com", **fields},
        headers={"Authorization": f"Bearer {web.api_key}"},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-event="\d+">(.*?)</tr>', page, re.S)


def test_the_audit_page_lists_a_role_change_made_in_the_ui_with_its_before_and_after(
    web: Browserless,
) -> None:
    add_server(web, "smtp-main", password=PASSWORD)
    news = add_server(web, "smtp-news")
    response = web.submit(f"/smtp/{news}/role", role="newsletters")
    assert response.status_code == 303, response.text

    page = web.get("/audit")

    assert page.status_code == 200, page.text
    newest = rows(page.text)[0]
    assert "role change" in newest
    assert f'href="/smtp/{news}"' in newest and "smtp-news" in newest
    assert re.search(r"<code>role</code>: none → newsletters", newest)
    assert '<td data-label="Actor">default</td>' in newest
    assert "***" in page.text and PASSWORD not in page.text
    assert 'href="/audit" aria-current="page"' in page.text


def test_the_audit_page_filters_by_object_and_refuses_an_unknown_one(
    make_web: WebFactory,
) -> None:
    web, other = make_web(), make_web()
    add_server(web, "smtp-main")
    add_server(other, "smtp-elsewhere")

    servers = web.get("/audit?object_type=smtp_server")
    campaigns = web.get("/audit?object_type=campaign")
    unknown = web.get("/audit?object_type=planet")

    assert len(rows(servers.text)) == 1 and "smtp-main" in servers.text
    assert "smtp-elsewhere" not in servers.text
    assert rows(campaigns.text) == [] and "No change matches this filter." in campaigns.text
    assert unknown.status_code == 422
    assert "Choose a kind of object from the list." in unknown.text
