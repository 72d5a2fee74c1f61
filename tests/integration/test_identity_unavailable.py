"""A DICOM User Identity that cannot be checked is no verdict on the identity: the real listener,
on the real broker, with an auth that admits the AE but answers ``auth.identify`` too late, says
its user database is away, or whose JWKS cannot be fetched. Each association is rejected
transiently (PS3.8 Table 9-21: rejected-transient, service-provider (presentation), temporary
congestion), not permanently as a bad identity, and audited as a serious failure (outcome 8)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.auth.tokens import issue_token
from edge.common.admission import Admission, Identified
from edge.common.bus import EXCHANGE, declare_topology
from edge.common.events import UserAuthenticationAudited, from_parts
from edge.common.netutil import free_ports
from edge.common.rpc import RpcServer
from edge.listener.bootstrap import ListenerService
from edge.listener.settings import ListenerSettings
from tests.unit.test_authn import CONFIG, make_key

CALLING = "IDSCU"
TRANSIENT = (0x02, 0x03, 0x01)
# Well formed and signed, by a key the listener could only learn from auth's JWKS.
JWT = issue_token(make_key()[0], subject="router", role="service", config=CONFIG).access_token


@dataclass
class SlowAuth:
    """Admits CALLING (identity required); ``identify`` answers as ``mode`` says."""

    mode: str = "slow"
    audits: list[UserAuthenticationAudited] = field(default_factory=list)

    async def admit(self, _: dict[str, Any]) -> dict[str, Any]:
        terms = Admission(
            True,
            "registered",
            frozenset({"echo"}),
            identity="required",
            identity_kinds=frozenset({"password", "jwt"}),
        )
        return terms.to_json()

    async def identify(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "slow":
            await asyncio.sleep(3)  # far past the listener's deadline
        return Identified(False, reason="user database unavailable", unavailable=True).to_json()

    async def revocations(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"revocations": {}}


@pytest.fixture
async def listener(amqp_url: str) -> AsyncIterator[tuple[ListenerService, SlowAuth]]:
    auth = SlowAuth()
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await declare_topology(channel)
    audit_queue = await channel.declare_queue(
        "", exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
    )
    await audit_queue.bind(EXCHANGE, routing_key=UserAuthenticationAudited.name)

    async def on_audit(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = from_parts(dict(message.headers or {}), message.body)
        assert isinstance(event, UserAuthenticationAudited)
        auth.audits.append(event)

    await audit_queue.consume(on_audit, no_ack=True)
    server = RpcServer(
        connection,
        {
            "auth.admit": auth.admit,
            "auth.identify": auth.identify,
            "auth.revocations": auth.revocations,
        },
    )
    await server.start()
    dicom_port, closed_port = free_ports(2)
    settings = ListenerSettings(
        amqp_url=amqp_url,
        dicom_host="127.0.0.1",
        dicom_port=dicom_port,
        ae_title="EDGE",
        rpc_timeout=0.5,
        auth_url=f"http://127.0.0.1:{closed_port}",  # nobody there: no JWKS
    )
    service = ListenerService(settings)
    await service.start()
    try:
        yield service, auth
    finally:
        await service.stop(grace=2)
        await server.stop()
        await connection.close()


def associate(port: int, kind: int, primary: bytes, secondary: bytes | None) -> Any:
    client = AE(ae_title=CALLING)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 10
    client.add_requested_context(Verification)
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if secondary is not None:
        item.secondary_field = secondary
    item.positive_response_requested = True
    return client.associate("127.0.0.1", port, ae_title="EDGE", ext_neg=[item])


@pytest.mark.parametrize(
    ("mode", "kind", "primary", "secondary"),
    [
        ("slow", 2, b"alice", b"alice-password-1"),  # auth.identify times out
        ("database away", 2, b"alice", b"alice-password-1"),  # auth answers: cannot check
        ("slow", 5, JWT.encode(), None),  # a JWT, and auth's JWKS unreachable
    ],
)
async def test_an_identity_that_cannot_be_checked_is_rejected_transiently_and_audited(
    listener: tuple[ListenerService, SlowAuth],
    mode: str,
    kind: int,
    primary: bytes,
    secondary: bytes | None,
) -> None:
    service, auth = listener
    auth.mode = mode
    port = service.settings.dicom_port
    assoc = await asyncio.to_thread(associate, port, kind, primary, secondary)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == TRANSIENT
    for _ in range(100):
        if auth.audits:
            break
        await asyncio.sleep(0.05)
    [audit] = auth.audits
    assert audit.outcome == 8  # serious failure: the check itself failed
    assert str(audit.outcome_description).startswith("user identity: ")
    assert "could not be checked" in str(audit.outcome_description) or (
        "unavailable" in str(audit.outcome_description)
    )
    assert CALLING in [p.user_id for p in audit.participants]
