"""Secret keys rotate: several keys newest first, re-encryption, and removing the old key.

The end-to-end case stores SMTP passwords under key A, rotates to `B,A`, removes A,
and checks the passwords still decrypt and a real worker still logs in with them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from postyard.api.app import create_app
from postyard.config import ConfigError, Settings
from postyard.db.engine import Database
from postyard.db.models import SmtpServer
from postyard.delivery.worker import Worker
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.secretbox import SecretBox, SecretKeyMismatch, configured_keys, secret_box
from postyard.services.secrets import rotate_secrets
from postyard.services.unsubscribe import UnsubscribeToken, make_token, read_token
from postyard.services.workspaces import create_workspace

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
USER = "mailer"
PASSWORDS = ["first-pässword", "second password"]


def with_keys(settings: Settings, keys: str) -> Settings:
    return Settings(**{**settings.__dict__, "secret_key": None, "secret_keys": keys})


# --- SecretBox with several keys -------------------------------------------------------------


def test_new_secrets_use_the_first_key_and_older_ones_still_read() -> None:
    old = SecretBox(KEY_A).encrypt("hunter2")
    rotated = SecretBox([KEY_B, KEY_A])
    assert rotated.decrypt(old) == "hunter2"
    fresh = rotated.encrypt("hunter3")
    assert SecretBox(KEY_B).decrypt(fresh) == "hunter3"
    with pytest.raises(SecretKeyMismatch):
        SecretBox(KEY_A).decrypt(fresh)


def test_reencrypt_moves_a_secret_to_the_newest_key() -> None:
    box = SecretBox([KEY_B, KEY_A])
    old = SecretBox(KEY_A).encrypt("hunter2")
    assert not box.is_current(old)
    moved = box.reencrypt(old)
    assert box.is_current(moved)
    assert SecretBox(KEY_B).decrypt(moved) == "hunter2"


def test_a_secret_under_no_configured_key_is_a_mismatch_naming_the_setting() -> None:
    token = SecretBox(KEY_A).encrypt("hunter2")
    with pytest.raises(SecretKeyMismatch, match="POSTYARD_SECRET_KEYS") as refused:
        SecretBox([KEY_B]).decrypt(token)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(SecretKeyMismatch):
        SecretBox([KEY_B]).reencrypt(token)


def test_signatures_survive_rotation_while_the_old_key_is_listed() -> None:
    """Unsubscribe links (and UI sessions) signed under A verify under `B,A`, not under `B`."""
    token = UnsubscribeToken(workspace_id=3, person_pk=41, campaign_id=7)
    link = make_token(SecretBox(KEY_A), token)
    assert read_token(SecretBox([KEY_B, KEY_A]), link) == token
    assert read_token(SecretBox([KEY_B]), link) is None
    # New signatures are made with the newest key.
    new_link = make_token(SecretBox([KEY_B, KEY_A]), token)
    assert read_token(SecretBox([KEY_B]), new_link) == token
    assert read_token(SecretBox([KEY_A]), new_link) is None


def test_a_single_key_box_signs_as_before() -> None:
    """`POSTYARD_SECRET_KEY` alone and a one-key list are the same box."""
    assert SecretBox(KEY_A).sign("x") == SecretBox([KEY_A]).sign("x")
    assert SecretBox("passphrase").decrypt(SecretBox(["passphrase"]).encrypt("y")) == "y"


def test_a_box_needs_a_key() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        SecretBox([])


# --- Settings --------------------------------------------------------------------------------


def test_secret_keys_are_read_newest_first_and_win_over_secret_key(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "POSTYARD_SECRET_KEYS": f" {KEY_B} , {KEY_A} ",
            "POSTYARD_SECRET_KEY": "ignored",
            "POSTYARD_SECRET_KEY_FILE": str(tmp_path / "key"),
        }
    )
    assert configured_keys(settings) == [KEY_B, KEY_A]
    box = secret_box(settings)
    assert SecretBox(KEY_B).decrypt(box.encrypt("x")) == "x"
    assert not (tmp_path / "key").exists()


def test_secret_key_alone_still_works() -> None:
    settings = Settings.from_env({"POSTYARD_SECRET_KEY": KEY_A})
    assert configured_keys(settings) == [KEY_A]
    assert SecretBox(KEY_A).decrypt(secret_box(settings).encrypt("x")) == "x"


@pytest.mark.parametrize("raw", [f"{KEY_B},,{KEY_A}", f"{KEY_B},", f",{KEY_A}"])
def test_an_empty_entry_in_secret_keys_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="POSTYARD_SECRET_KEYS") as refused:
        configured_keys(Settings(secret_keys=raw))
    assert KEY_A not in str(refused.value) and KEY_B not in str(refused.value)


def test_rate_limit_setting_takes_zero_to_turn_it_off() -> None:
    assert Settings().api_rate_limit_per_minute == 6000
    env = {"POSTYARD_API_RATE_LIMIT_PER_MINUTE": "0"}
    assert Settings.from_env(env).api_rate_limit_per_minute == 0
    env = {"POSTYARD_API_RATE_LIMIT_PER_MINUTE": "120"}
    assert Settings.from_env(env).api_rate_limit_per_minute == 120
    with pytest.raises(ConfigError, match="zero \\(off\\) or more"):
        Settings.from_env({"POSTYARD_API_RATE_LIMIT_PER_MINUTE": "-1"})


# --- Rotation of what is stored --------------------------------------------------------------


def stored_tokens(database: Database) -> dict[int, str | None]:
    with database.session() as session:
        return dict(session.execute(select(SmtpServer.id, SmtpServer.password_encrypted)).all())


def add_servers(database: Database, settings: Settings, smtp_port: int) -> str:
    """A workspace whose servers' passwords are stored under key A, through the API; its key.

    The first server (`all_emails`) has the first password."""
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    client = TestClient(
        create_app(with_keys(settings, KEY_A), database),
        headers={"Authorization": f"Bearer {created.api_key}"},
    )
    for index, password in enumerate(PASSWORDS):
        response = client.post(
            "/v1/smtp_servers",
            json={
                "name": f"smtp-{index}",
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "username": USER,
                "password": password,
            },
        )
        assert response.status_code == 201, response.text
    response = client.post(
        "/v1/smtp_servers",
        json={"name": "no-password", "host": "127.0.0.1", "port": smtp_port, "security": "none"},
    )
    assert response.status_code == 201, response.text
    client.close()
    return created.api_key


def test_rotate_then_remove_the_old_key_and_the_worker_still_logs_in(
    database: Database, settings: Settings
) -> None:
    with LocalSMTPServer(name="smtp-auth", auth=(USER, PASSWORDS[0])) as smtp:
        api_key = add_servers(database, settings, smtp.port)
        before = stored_tokens(database)

        with database.session() as session:
            rotation = rotate_secrets(session, secret_box(with_keys(settings, f"{KEY_B},{KEY_A}")))
        assert (rotation.reencrypted, rotation.were_under_older_keys) == (2, 2)

        after = stored_tokens(database)
        assert set(after) == set(before)
        only_b = secret_box(with_keys(settings, KEY_B))
        decrypted = sorted(only_b.decrypt(token) for token in after.values() if token)
        assert decrypted == sorted(PASSWORDS)
        assert [i for i, token in after.items() if token is None] == [
            i for i, token in before.items() if token is None
        ]

        # A second rotation finds everything current already.
        with database.session() as session:
            again = rotate_secrets(session, secret_box(with_keys(settings, f"{KEY_B},{KEY_A}")))
        assert (again.reencrypted, again.were_under_older_keys) == (2, 0)

        # With A removed, the API and a worker run on B alone and log in to the AUTH server.
        b_settings = with_keys(settings, KEY_B)
        with TestClient(
            create_app(b_settings, database), headers={"Authorization": f"Bearer {api_key}"}
        ) as client:
            queued = client.post(
                "/v1/test_messages",
                json={
                    "campaign_type": "newsletter",
                    "to": "reader@example.com",
                    "from": "news@acme.example",
                    "subject": "after rotation",
                    "text": "Hello",
                },
            )
            assert queued.status_code == 202, queued.text
            asyncio.run(Worker(database, b_settings).drain(timeout=20))
            record = client.get(f"/v1/deliveries/{queued.json()['id']}").json()
        assert record["status"] == "sent", record
        [message] = smtp.messages
        assert message.auth_user == USER
        assert message.subject == "after rotation"


def test_rotation_stops_without_changes_when_a_secret_is_unreadable(
    database: Database, settings: Settings
) -> None:
    add_servers(database, settings, 2525)
    before = stored_tokens(database)
    with database.session() as session, pytest.raises(SecretKeyMismatch) as refused:
        rotate_secrets(session, secret_box(with_keys(settings, KEY_B)))
    message = str(refused.value)
    assert "smtp-0" in message and "Nothing was changed" in message
    assert not any(password in message for password in PASSWORDS)
    assert stored_tokens(database) == before
