"""Validated field types shared by the schemas: what may go into a header or an envelope."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Annotated, ClassVar, Self

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    model_validator,
)

STRICT = ConfigDict(extra="forbid")

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _single_line(value: str) -> str:
    """CR or LF in a header value would let the value start headers of its own."""
    if "\r" in value or "\n" in value:
        raise ValueError("must be a single line (no CR or LF characters)")
    return value


def _no_nul(value: str) -> str:
    """PostgreSQL cannot store NUL in text: refuse it as bad input rather than fail on insert."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _address(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise ValueError(f"'{value}' is not a valid email address: {error}") from None


def _mailbox(value: str) -> str:
    """An address with an optional display name: `Acme News <news@acme.example>`."""
    _single_line(value)
    mailboxes = getaddresses([value])
    if len(mailboxes) != 1 or not mailboxes[0][1]:
        raise ValueError(f"'{value}' must be exactly one email address")
    name, address = mailboxes[0]
    normalized = _address(address)
    return str(Address(display_name=name, addr_spec=normalized)) if name else normalized


def _utc(moment: datetime) -> datetime:
    """Stored as naive UTC; a time without a zone is taken to be UTC."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"'{value}' is not a host name or IP address")
    return value.rstrip(".").lower()


HeaderLine = Annotated[
    str, StringConstraints(max_length=998), AfterValidator(_single_line), AfterValidator(_no_nul)
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_single_line),
    AfterValidator(_no_nul),
]
Text = Annotated[str, AfterValidator(_no_nul)]
EmailAddress = Annotated[str, StringConstraints(max_length=320), AfterValidator(_address)]
Mailbox = Annotated[
    str, StringConstraints(max_length=998), AfterValidator(_no_nul), AfterValidator(_mailbox)
]
Host = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_host)]
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Position = Annotated[StrictInt, Field(ge=1)]
MaxConnections = Annotated[StrictInt, Field(ge=1, le=100)]
# A server's limits across all workers; None (null) means no limit.
RateLimit = Annotated[StrictFloat, Field(gt=0, le=10_000, allow_inf_nan=False)]
MessagesPerConnection = Annotated[StrictInt, Field(ge=1, le=1_000_000)]
# Ids in paths and filters: the id columns are 32-bit INTEGER on PostgreSQL, and a number
# outside that range must be refused as input, not reach the driver (which raises: a 500).
RowId = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


class Patch(BaseModel):
    """A PATCH body: only the fields sent change, and only those in `NULLABLE` may be null."""

    model_config = STRICT
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _only_nullable_fields_are_null(self) -> Self:
        fields = type(self).model_fields
        nulled = sorted(
            fields[name].alias or name
            for name in self.model_fields_set - self.NULLABLE
            if getattr(self, name) is None
        )
        if nulled:
            raise ValueError(f"{', '.join(nulled)} cannot be null")
        return self
