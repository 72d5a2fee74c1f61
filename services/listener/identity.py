"""Who is on the other end of an association, beyond its AE title: the transport (plain or TLS,
and the client certificate's names) and the DICOM User Identity it presented (PS3.7 D.3.3.7).

Plain decisions of an :class:`~edge.common.admission.Admission` (the registry's terms for the
calling AE) and what the association brought, plus the ``EVT_USER_ID`` handler, which verifies a
username and passcode through auth (``auth.identify``: argon2id, lockout, audited as a login) or
a JSON Web Token locally against auth's JWKS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from edge.common.admission import Admission, Identified
from edge.common.tls import certificate_names_ae

log = logging.getLogger(__name__)

# PS3.7 D.3.3.7.1 User Identity Type -> the kind the registry names.
USERNAME, USERNAME_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5
KINDS = {USERNAME_PASSCODE: "password", JWT: "jwt"}
TYPE_NAMES = {
    USERNAME: "username",
    USERNAME_PASSCODE: "username and passcode",
    KERBEROS: "Kerberos",
    SAML: "SAML",
    JWT: "JWT",
}

# (kind, primary field, secondary field, peer address) -> auth's verdict; blocks.
Identify = Callable[[str, bytes, bytes | None, str], Identified]

_OUTCOME = "edge_identity"  # attribute of the pynetdicom Association holding the verdict


def transport_refusal(
    admission: Admission, *, over_tls: bool, peer_cert: dict[str, Any] | None, calling_ae: str
) -> str | None:
    """Why this association's transport is not good enough for the calling AE (None: it is).

    A ``tls_required`` AE must come over TLS; a ``tls_client_cert`` AE must present a client
    certificate (our CA verified it in the handshake) naming its AE title; a certificate that
    names another AE is refused whatever the registry says (it is someone else's)."""
    if admission.tls_required and not over_tls:
        return "TLS required for this AE"
    if peer_cert:
        if not certificate_names_ae(peer_cert, calling_ae):
            return "client certificate does not name this AE"
    elif admission.tls_client_cert:
        return "client certificate required for this AE"
    return None


def identity_refusal(admission: Admission, user_id_type: int | None) -> str | None:
    """Whether the identity offered (``user_id_type``, None for none) can be accepted at all,
    before it is verified: None when it may go on (or is ignored), else the reason."""
    if user_id_type is None:
        return "user identity required" if admission.identity == "required" else None
    if admission.identity == "none":
        return None  # not supported for this AE: ignored, no response (PS3.7 D.3.3.7.3)
    kind = KINDS.get(user_id_type)
    if kind is None or kind not in admission.identity_kinds:
        return f"user identity type {TYPE_NAMES.get(user_id_type, user_id_type)} not accepted"
    return None


@dataclass(frozen=True)
class IdentityOutcome:
    verified: bool
    user: str = ""
    reason: str = ""
    # Not checked at all (auth unreachable or timing out, its database or keys away): the
    # association is rejected transiently, not as a bad identity.
    unavailable: bool = False


def outcome_of(assoc: Any) -> IdentityOutcome | None:
    """What :func:`on_user_identity` decided for ``assoc`` (None: it did not run)."""
    return getattr(assoc, _OUTCOME, None)


def on_user_identity(event: evt.Event, identify: Identify) -> tuple[bool, bytes | None]:
    """EVT_USER_ID (PS3.7 D.3.3.7): verify a username and passcode (type 2) or a JSON Web
    Token (type 5). Returns ``(verified, server response)``: the response is empty (PS3.8
    D.3.3.7.2: no server response for these types) and sent only when the requestor asked."""
    assoc = event.assoc
    fields: Any = event  # pynetdicom sets these attributes for EVT_USER_ID only
    user_id_type = int(fields.user_id_type)
    kind = KINDS.get(user_id_type)
    if kind is None:
        outcome = IdentityOutcome(False, reason=f"user identity type {user_id_type} not accepted")
    else:
        primary = bytes(fields.primary_field or b"")
        secondary = fields.secondary_field
        try:
            verdict = identify(kind, primary, secondary, str(assoc.requestor.address))
        except Exception as exc:  # auth or its keys unreachable, or too slow: not checked
            log.error("user identity check failed: %s", type(exc).__name__)
            verdict = Identified(
                False, reason="user identity could not be checked", unavailable=True
            )
        outcome = IdentityOutcome(
            verdict.verified, verdict.user, verdict.reason, verdict.unavailable
        )
    setattr(assoc, _OUTCOME, outcome)
    return outcome.verified, (b"" if outcome.verified else None)
