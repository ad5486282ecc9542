"""Test connection": walk through an SMTP session step by step and report each reply.

The worker's errors say only what finally went wrong; a person setting up a
server wants to see how far the conversation got (connected, spoke EHLO,
upgraded to TLS, logged in) and the server's own words at each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosmtplib

from postyard.delivery.endpoints import Endpoint, HostNotAllowed
from postyard.delivery.pool import close_client, describe_error


@dataclass(frozen=True)
class Step:
    step: str
    ok: bool
    reply: str


async def probe(endpoint: Endpoint, local_hostname: str) -> list[Step]:
    """Connect, EHLO, STARTTLS (or TLS from the start), AUTH: stop at the first failure."""
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        timeout=endpoint.timeout,
        use_tls=endpoint.security == "tls",
        start_tls=False,
        tls_context=endpoint.tls_context(),
        local_hostname=local_hostname,
    )
    steps: list[Step] = []
    connect_step = "connect (TLS)" if endpoint.security == "tls" else "connect"
    actions = [
        (connect_step, lambda: endpoint.connect(client)),
        ("ehlo", client.ehlo),
    ]
    if endpoint.security == "starttls":
        actions.append(("starttls", client.starttls))
    if endpoint.username:
        actions.append(
            ("auth", lambda: client.login(endpoint.username or "", endpoint.password or ""))
        )
    try:
        for name, action in actions:
            try:
                response = await action()
            except HostNotAllowed as refusal:
                steps.append(Step(name, False, refusal.error))
                break
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                steps.append(Step(name, False, describe_error(error)))
                break
            steps.append(Step(name, True, f"{response.code} {response.message}"))
    finally:
        await close_client(client)
    return steps
