"""`postyard key create|list|revoke` and `postyard secrets rotate`, run as a user runs them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from postyard.api.app import create_app
from postyard.cli import app as cli
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import SmtpServer
from postyard.secretbox import SecretBox, SecretKeyMismatch, hash_api_key

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


@pytest.fixture
def postyard(settings: Settings) -> Any:
    """`postyard(*args, keys=...)`: the CLI against the test database; keys as in
    POSTYARD_SECRET_KEYS (defaults to the tests' own key)."""
    runner = CliRunner()

    def run(*args: str, keys: str | None = None, expect: int = 0) -> Result:
        env = {
            "POSTYARD_DATABASE_URL": settings.database_url,
            "POSTYARD_SECRET_KEY": None if keys else settings.secret_key,
            "POSTYARD_SECRET_KEYS": keys,
        }
        result = runner.invoke(cli, list(args), env=env)  # type: ignore[arg-type]
        assert result.exit_code == expect, result.output
        return result

    return run


def workspace(postyard: Any) -> dict[str, Any]:
    return json.loads(postyard("workspace", "create", "Acme", "--json").stdout)


def client(settings: Settings, database: Database, api_key: str) -> TestClient:
    return TestClient(
        create_app(settings, database), headers={"Authorization": f"Bearer {api_key}"}
    )


def test_create_list_use_and_revoke_keys(
    postyard: Any, settings: Settings, database: Database
) -> None:
    created_workspace = workspace(postyard)
    workspace_id = str(created_workspace["workspace_id"])

    made = json.loads(
        postyard(
            "key", "create", workspace_id, "--name", "mobile app", "--scope", "track", "--json"
        ).stdout
    )
    assert made["name"] == "mobile app" and made["scope"] == "track"
    assert made["api_key"].startswith("pk_") and made["last_used_at"] is None

    track = client(settings, database, made["api_key"])
    assert track.put("/v1/people/u1", json={"plan": "pro"}).status_code == 201
    refused = track.get("/v1/routing")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "scope"

    listing = postyard("key", "list", workspace_id, "--json").stdout
    keys = {key["name"]: key for key in json.loads(listing)}
    assert set(keys) == {"default", "mobile app"}
    assert keys["default"]["scope"] == "admin"
    assert keys["mobile app"]["last_used_at"] is not None
    assert keys["mobile app"]["revoked_at"] is None
    assert made["api_key"] not in listing and created_workspace["api_key"] not in listing
    assert hash_api_key(made["api_key"]) not in listing

    table = postyard("key", "list", workspace_id).stdout
    assert "mobile app" in table and "track" in table and "never" in table
    assert made["api_key"] not in table

    revoked = postyard("key", "revoke", str(made["id"])).stdout
    assert "Revoked API key" in revoked and "mobile app" in revoked
    assert track.put("/v1/people/u1", json={"plan": "pro"}).status_code == 401
    after = {
        key["name"]: key
        for key in json.loads(postyard("key", "list", workspace_id, "--json").stdout)
    }
    assert after["mobile app"]["revoked_at"] is not None
    assert after["default"]["revoked_at"] is None


def test_key_create_prints_the_key_once_for_people(postyard: Any) -> None:
    workspace_id = str(workspace(postyard)["workspace_id"])
    output = postyard("key", "create", workspace_id, "--name", "backend").stdout
    assert "pk_" in output and "scope admin" in output
    assert "cannot show it again" in output


def test_key_commands_refuse_what_does_not_exist(postyard: Any) -> None:
    missing = postyard("key", "create", "999999", "--name", "x", expect=1)
    assert "no workspace 999999" in missing.output
    assert "no workspace 999999" in postyard("key", "list", "999999", expect=1).output
    assert "no API key 999999" in postyard("key", "revoke", "999999", expect=1).output
    workspace_id = str(workspace(postyard)["workspace_id"])
    postyard("key", "create", workspace_id, "--name", "x", "--scope", "owner", expect=2)
    postyard("key", "create", workspace_id, "--name", "  ", expect=1)


def stored_passwords(database: Database) -> list[str]:
    with database.session() as session:
        return [
            server.password_encrypted
            for server in session.query(SmtpServer).order_by(SmtpServer.id)
            if server.password_encrypted
        ]


def test_secrets_rotate_reencrypts_and_reports_the_count(
    postyard: Any, settings: Settings, database: Database
) -> None:
    api_key = json.loads(
        postyard("workspace", "create", "Acme", "--plan", "premium", "--json", keys=KEY_A).stdout
    )["api_key"]
    under_a = Settings(**{**settings.__dict__, "secret_key": None, "secret_keys": KEY_A})
    api = client(under_a, database, api_key)
    for name, password in [("smtp-1", "first-secret"), ("smtp-2", "second-secret")]:
        response = api.post(
            "/v1/smtp_servers",
            json={"name": name, "host": "smtp.example.com", "username": "u", "password": password},
        )
        assert response.status_code == 201, response.text

    # Without A, nothing can be read: rotation refuses and changes nothing.
    before = stored_passwords(database)
    refused = postyard("secrets", "rotate", keys=KEY_B, expect=1)
    assert "cannot be decrypted" in refused.output and "Nothing was changed" in refused.output
    assert "first-secret" not in refused.output
    assert stored_passwords(database) == before

    output = postyard("secrets", "rotate", keys=f"{KEY_B},{KEY_A}").stdout
    assert "Re-encrypted 2 stored secrets" in output
    assert "(2 were under an older key)" in output
    decrypted = [SecretBox(KEY_B).decrypt(token) for token in stored_passwords(database)]
    assert decrypted == ["first-secret", "second-secret"]
    with pytest.raises(SecretKeyMismatch):
        SecretBox(KEY_A).decrypt(stored_passwords(database)[0])

    again = postyard("secrets", "rotate", keys=KEY_B).stdout
    assert "Re-encrypted 2 stored secrets" in again and "(0 were under an older key)" in again


def test_a_malformed_secret_keys_setting_is_a_configuration_error(postyard: Any) -> None:
    result = postyard("secrets", "rotate", keys=f"{KEY_B},,{KEY_A}", expect=2)
    assert "POSTYARD_SECRET_KEYS" in result.output
    assert KEY_A not in result.output and KEY_B not in result.output
