"""Settings from the environment, secrets at rest, API key hashing."""

from __future__ import annotations

import dataclasses
import logging
import stat
from ipaddress import ip_network
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from postyard.config import DEFAULT_DATABASE_URL, ConfigError, Settings
from postyard.secretbox import (
    API_KEY_PREFIX,
    SecretBox,
    SecretKeyMismatch,
    hash_api_key,
    new_api_key,
    secret_box,
)

# --- Settings.from_env ---------------------------------------------------------------------


def as_dict(settings: Settings) -> dict[str, object]:
    return dataclasses.asdict(settings)


def test_from_env_reads_every_postyard_variable() -> None:
    settings = Settings.from_env(
        {
            "POSTYARD_DATABASE_URL": "postgresql+psycopg://u@db/postyard",
            "POSTYARD_SECRET_KEY": "s3cret",
            "POSTYARD_SECRET_KEY_FILE": "/var/lib/postyard/key",
            "POSTYARD_DEFAULT_SMTP_URL": "smtp://relay.example.com:25",
            "POSTYARD_MESSAGE_LIFETIME_SECONDS": "7200",
            "POSTYARD_RETRY_BASE_SECONDS": "2.5",
            "POSTYARD_RETRY_MAX_SECONDS": "600",
            "POSTYARD_SMTP_TIMEOUT_SECONDS": "10",
            "POSTYARD_LEASE_SECONDS": "45",
            "POSTYARD_WORKER_BATCH_SIZE": "50",
            "POSTYARD_WORKER_POLL_SECONDS": "0.5",
            "POSTYARD_MAX_REQUEST_BYTES": "2048",
            "POSTYARD_HOSTNAME": "worker-7",
        }
    )
    assert settings == Settings(
        database_url="postgresql+psycopg://u@db/postyard",
        secret_key="s3cret",
        secret_key_file=Path("/var/lib/postyard/key"),
        default_smtp_url="smtp://relay.example.com:25",
        message_lifetime_seconds=7200.0,
        retry_base_seconds=2.5,
        retry_max_seconds=600.0,
        smtp_timeout_seconds=10.0,
        lease_seconds=45.0,
        worker_batch_size=50,
        worker_poll_seconds=0.5,
        max_request_bytes=2048,
        hostname="worker-7",
    )


def test_to_env_gives_variables_that_read_back_as_the_same_settings() -> None:
    """How `postyard serve --workers` hands its settings to its worker processes."""
    settings = Settings(
        database_url="postgresql+psycopg://u:pw@db/postyard",
        secret_keys="new-key,old-key",
        secret_key_file=Path("/var/lib/postyard/key"),
        default_smtp_url="smtp://relay.example.com:25",
        public_url="https://mail.example.com",
        retry_base_seconds=2.5,
        worker_batch_size=50,
        api_rate_limit_per_minute=0,
        hostname="worker-7",
        multi_tenant=True,
        smtp_allowed_networks=(ip_network("10.1.0.0/16"), ip_network("fd00::/8")),
        smtp_allowed_ports=(25, 587),
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_from_env_keeps_the_types_of_the_defaults() -> None:
    settings = Settings.from_env(
        {
            "POSTYARD_WORKER_BATCH_SIZE": "50",
            "POSTYARD_LEASE_SECONDS": "45",
            "POSTYARD_SECRET_KEY_FILE": "k",
        }
    )
    assert type(settings.worker_batch_size) is int
    assert type(settings.lease_seconds) is float
    assert isinstance(settings.secret_key_file, Path)


def test_from_env_with_nothing_set_keeps_every_default() -> None:
    settings = Settings.from_env({})
    assert as_dict(settings) == as_dict(Settings())
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.secret_key is None
    assert settings.default_smtp_url is None
    assert settings.message_lifetime_seconds == 3 * 24 * 3600


def test_from_env_treats_empty_variables_as_unset() -> None:
    names = [f"POSTYARD_{f.name.upper()}" for f in dataclasses.fields(Settings)]
    assert as_dict(Settings.from_env(dict.fromkeys(names, ""))) == as_dict(Settings())


def test_from_env_ignores_other_variables() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://x", "POSTYARD_UNKNOWN": "1"})
    assert settings.database_url == DEFAULT_DATABASE_URL


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POSTYARD_DEFAULT_SMTP_URL", "smtp://relay.example.com")
    monkeypatch.setenv("POSTYARD_WORKER_BATCH_SIZE", "9")
    settings = Settings.from_env()
    assert settings.default_smtp_url == "smtp://relay.example.com"
    assert settings.worker_batch_size == 9


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("POSTYARD_LEASE_SECONDS", "soon"),
        ("POSTYARD_RETRY_BASE_SECONDS", "1m"),
        ("POSTYARD_WORKER_BATCH_SIZE", "many"),
        ("POSTYARD_WORKER_BATCH_SIZE", "2.5"),
        ("POSTYARD_MAX_REQUEST_BYTES", "1e6x"),
        ("POSTYARD_MESSAGE_LIFETIME_SECONDS", "nan"),
        ("POSTYARD_RETRY_MAX_SECONDS", "inf"),
    ],
)
def test_a_non_number_is_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name) as refused:
        Settings.from_env({name: raw})
    assert repr(raw) in str(refused.value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("POSTYARD_LEASE_SECONDS", "0"),
        ("POSTYARD_RETRY_BASE_SECONDS", "-1.5"),
        ("POSTYARD_WORKER_BATCH_SIZE", "0"),
        ("POSTYARD_WORKER_BATCH_SIZE", "-10"),
        ("POSTYARD_SMTP_TIMEOUT_SECONDS", "0.0"),
    ],
)
def test_a_non_positive_number_is_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be greater than zero"):
        Settings.from_env({name: raw})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- SecretBox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", ["hunter2", "", "pässwörd with spaces", "x" * 4096, "line\nbreak"]
)
def test_secret_box_round_trips(plaintext: str) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    assert box.decrypt(box.encrypt(plaintext)) == plaintext


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    box = SecretBox(Fernet.generate_key().decode())
    token = box.encrypt("correct-horse-battery-staple")
    assert "correct-horse-battery-staple" not in token
    assert "correct" not in token
    assert box.encrypt("correct-horse-battery-staple") != token


def test_a_different_key_cannot_decrypt() -> None:
    token = SecretBox(Fernet.generate_key().decode()).encrypt("hunter2")
    with pytest.raises(SecretKeyMismatch, match="POSTYARD_SECRET_KEY"):
        SecretBox(Fernet.generate_key().decode()).decrypt(token)


def test_a_tampered_token_is_refused_as_a_key_mismatch() -> None:
    box = SecretBox("some passphrase")
    token = box.encrypt("hunter2")
    with pytest.raises(SecretKeyMismatch):
        box.decrypt(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


@pytest.mark.parametrize("passphrase", ["a", "correct horse battery staple", "ключ", "=" * 44])
def test_any_passphrase_works_as_a_key(passphrase: str) -> None:
    token = SecretBox(passphrase).encrypt("hunter2")
    assert SecretBox(passphrase).decrypt(token) == "hunter2"


def test_different_passphrases_give_different_keys() -> None:
    token = SecretBox("passphrase one").encrypt("hunter2")
    with pytest.raises(SecretKeyMismatch):
        SecretBox("passphrase two").decrypt(token)


def test_a_generated_fernet_key_is_used_as_is() -> None:
    key = Fernet.generate_key()
    token = Fernet(key).encrypt(b"hunter2").decode()
    assert SecretBox(key.decode()).decrypt(token) == "hunter2"


def test_secret_box_uses_the_configured_key_and_writes_no_file(tmp_path: Path) -> None:
    key_file = tmp_path / "postyard.key"
    settings = Settings(secret_key="configured passphrase", secret_key_file=key_file)
    token = secret_box(settings).encrypt("hunter2")
    assert SecretBox("configured passphrase").decrypt(token) == "hunter2"
    assert not key_file.exists()


def test_secret_box_without_a_key_generates_a_private_key_file_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "state" / "postyard.key"
    settings = Settings(secret_key=None, secret_key_file=key_file)
    with caplog.at_level(logging.WARNING, logger="postyard.secretbox"):
        box = secret_box(settings)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    Fernet(key.encode())  # a real Fernet key, not a placeholder
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "POSTYARD_SECRET_KEY is not set" in warnings[0].getMessage()
    assert str(key_file.resolve()) in warnings[0].getMessage()
    assert SecretBox(key).decrypt(box.encrypt("hunter2")) == "hunter2"


def test_secret_box_reuses_the_generated_key_file_on_the_next_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "postyard.key"
    settings = Settings(secret_key=None, secret_key_file=key_file)
    token = secret_box(settings).encrypt("hunter2")
    written = key_file.read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="postyard.secretbox"):
        again = secret_box(settings)
    assert again.decrypt(token) == "hunter2"
    assert key_file.read_text() == written
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_empty_secret_key_setting_falls_back_to_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "postyard.key"
    secret_box(Settings(secret_key="", secret_key_file=key_file))
    assert key_file.exists()


# --- API keys ------------------------------------------------------------------------------


def test_hash_api_key_is_deterministic_and_not_the_key() -> None:
    key = new_api_key()
    digest = hash_api_key(key)
    assert digest == hash_api_key(key)
    assert digest != key
    assert key not in digest
    assert key.removeprefix(API_KEY_PREFIX) not in digest
    assert len(digest) == 64
    int(digest, 16)


def test_different_api_keys_hash_differently() -> None:
    assert hash_api_key("pk_one") != hash_api_key("pk_two")


def test_new_api_keys_are_prefixed_long_and_unique() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith(API_KEY_PREFIX) and len(key) >= 40 for key in keys)
