"""Reading the UI's forms: each field checked with the API's own rules, each problem
kept next to the field it is about, and what was typed kept for the form to show again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from postyard.api.fields import (
    EmailAddress,
    HeaderLine,
    Host,
    Mailbox,
    MessagesPerConnection,
    Name,
    RateLimit,
    Text,
)
from postyard.routing import CampaignType, Role
from postyard.services.smtp_servers import Security, ServerFields

SECURITY_LABELS = {
    Security.STARTTLS.value: "STARTTLS",
    Security.TLS.value: "TLS",
    Security.NONE.value: "none — not encrypted",
}
SECURITY_CHOICES = {
    Security.STARTTLS.value: "STARTTLS (usually port 587)",
    Security.TLS.value: "TLS from the start (usually port 465)",
    Security.NONE.value: "None — not encrypted (trusted networks only)",
}
ROLE_CHOICES = {role.value: role.label for role in Role}

_NAME = TypeAdapter(Name)
_HOST = TypeAdapter(Host)
_EMAIL = TypeAdapter(EmailAddress)
_MAILBOX = TypeAdapter(Mailbox)
_HEADER = TypeAdapter(HeaderLine)
_TEXT = TypeAdapter(Text)
_RATE = TypeAdapter(RateLimit)
_PER_CONNECTION = TypeAdapter(MessagesPerConnection)


@dataclass
class Form:
    """What was typed (`values`) and what is wrong with it (`errors`, by field)."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self, name: str) -> str:
        return self.values.get(name, "").strip()

    def check(self, name: str, adapter: TypeAdapter[Any], value: str) -> Any:
        """`value` through the API's validator, or None with the problem noted on `name`."""
        try:
            return adapter.validate_python(value)
        except ValidationError as error:
            message = str(error.errors()[0]["msg"]).removeprefix("Value error, ")
            self.errors[name] = message[:1].upper() + message[1:] + "."
            return None

    def whole_number(self, name: str, low: int, high: int, what: str) -> int | None:
        raw = self.text(name)
        if raw.isascii() and raw.isdigit() and low <= int(raw) <= high:
            return int(raw)
        self.errors[name] = f"{what} must be a whole number from {low} to {high}."
        return None

    def required(self, name: str, message: str) -> bool:
        if self.text(name):
            return True
        self.errors[name] = message
        return False


CONNECTION_FIELDS = (
    "name",
    "host",
    "port",
    "security",
    "username",
    "ca_bundle",
    "max_connections",
    "rate_limit_per_second",
    "max_messages_per_connection",
)


def server_values(server: Any) -> dict[str, str]:
    """A stored server as the edit form shows it; never its password."""
    return {
        "name": server.name,
        "host": server.host,
        "port": str(server.port),
        "security": server.security,
        "username": server.username or "",
        "ca_bundle": server.ca_bundle or "",
        "max_connections": str(server.max_connections),
        "rate_limit_per_second": _number(server.rate_limit_per_second),
        "max_messages_per_connection": _number(server.max_messages_per_connection),
    }


def _number(value: float | None) -> str:
    """A limit as typed: 200 rather than 200.0, blank for none."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _limit(form: Form, name: str, adapter: TypeAdapter[Any], parse: type, message: str) -> Any:
    """An optional limit: blank is no limit; anything else goes through the API's validator."""
    raw = form.text(name)
    if not raw:
        return None
    try:
        return adapter.validate_python(parse(raw))
    except ValueError:  # pydantic's ValidationError is one too
        form.errors[name] = message
        return None


def _connection(form: Form) -> dict[str, Any]:
    """The connection fields every server form has, checked."""
    values: dict[str, Any] = {}
    if form.required("name", "Enter a name for this server."):
        values["name"] = form.check("name", _NAME, form.text("name"))
    if form.required("host", "Enter the server's host name or IP address."):
        values["host"] = form.check("host", _HOST, form.text("host"))
    values["port"] = form.whole_number("port", 1, 65535, "The port")
    security = form.text("security")
    if security not in SECURITY_CHOICES:
        form.errors["security"] = "Choose how to secure the connection."
    values["security"] = Security(security) if security in SECURITY_CHOICES else None
    username = form.text("username")
    values["username"] = form.check("username", _NAME, username) if username else None
    ca_bundle = form.values.get("ca_bundle", "").strip().replace("\r\n", "\n")
    values["ca_bundle"] = ca_bundle or None
    values["max_connections"] = form.whole_number("max_connections", 1, 100, "Connections at once")
    values["rate_limit_per_second"] = _limit(
        form,
        "rate_limit_per_second",
        _RATE,
        float,
        "Messages per second must be a number above 0 and at most 10,000, or blank.",
    )
    values["max_messages_per_connection"] = _limit(
        form,
        "max_messages_per_connection",
        _PER_CONNECTION,
        int,
        "Messages per connection must be a whole number from 1 to 1,000,000, or blank.",
    )
    return values


def new_server(raw: dict[str, str]) -> tuple[Form, ServerFields | None]:
    form = Form(raw)
    values = _connection(form)
    role = form.text("role")
    if role and role not in ROLE_CHOICES:
        form.errors["role"] = "Choose one of the roles in the list."
    password = form.values.get("password", "")
    if not form.ok:
        return form, None
    return form, ServerFields(
        **values,
        password=password or None,
        role=Role(role) if role else None,
    )


def server_changes(raw: dict[str, str]) -> tuple[Form, dict[str, Any] | None]:
    """The edit form: a blank password keeps the stored one; the checkbox removes it."""
    form = Form(raw)
    changes = _connection(form)
    password = form.values.get("password", "")
    remove = form.values.get("remove_password") == "yes"
    if password and remove:
        form.errors["password"] = (
            "Either type a new password or tick “Remove the stored password”, not both."
        )
    if not form.ok:
        return form, None
    if remove:
        changes["password"] = None
    elif password:
        changes["password"] = password
    return form, changes


@dataclass(frozen=True)
class TestEmail:
    campaign_type: CampaignType
    to: str
    from_: str
    subject: str
    text: str


def test_email(raw: dict[str, str]) -> tuple[Form, TestEmail | None]:
    form = Form(raw)
    kind = form.text("campaign_type")
    if kind not in {t.value for t in CampaignType}:
        form.errors["campaign_type"] = "Choose the campaign type to send as."
    to = from_ = subject = None
    if form.required("to", "Enter the address to send the test email to."):
        to = form.check("to", _EMAIL, form.text("to"))
    if form.required("from", "Enter the sender, like Acme <news@acme.example>."):
        from_ = form.check("from", _MAILBOX, form.text("from"))
    if form.required("subject", "Enter a subject."):
        subject = form.check("subject", _HEADER, form.text("subject"))
    text = form.check("text", _TEXT, form.values.get("text", "").replace("\r\n", "\n"))
    if not form.ok:
        return form, None
    return form, TestEmail(CampaignType(kind), to, from_, subject, text or "")
