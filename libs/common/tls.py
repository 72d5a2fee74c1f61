"""DICOM TLS (PS3.15 B.1, BCP 195): the listener's server context, the client context of
outbound associations (C-MOVE), which AE titles a peer certificate names, and a development
certificate authority for ``make run`` and the test suites.

TLS 1.2 is the floor everywhere: a peer offering only TLS 1.0 or 1.1 fails the handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None = None,
    crl_file: Path | None = None,
) -> ssl.SSLContext:
    """The listener's context: our certificate; with ``ca_file``, a client certificate is asked
    for and, when one is sent, must chain to that CA (CERT_OPTIONAL: whether an AE must send one
    is the registry's ``tls_client_cert``, checked at association time). With ``crl_file``, a
    client certificate its issuer's CRL lists as revoked fails the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(cert_file, key_file)
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
    if crl_file is not None:
        if ca_file is None:
            raise ValueError("a CRL file needs a CA file: client certificates are not verified")
        load_crl(context, crl_file)
    return context


def client_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    crl_file: Path | None = None,
) -> ssl.SSLContext:
    """Context of an association we open (a C-MOVE destination that requires TLS, or ``edge
    echo --tls``): the peer's certificate is verified against ``ca_file`` (the system store
    without one) and its host name checked; ours is presented when given. With ``crl_file``,
    a peer certificate its issuer's CRL lists as revoked fails the handshake."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = MINIMUM_VERSION
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    if crl_file is not None:
        load_crl(context, crl_file)
    return context


def load_crl(context: ssl.SSLContext, crl_file: Path) -> None:
    """Check the peer's (leaf) certificate against the PEM CRLs in ``crl_file`` (RFC 5280).

    OpenSSL then insists on a current CRL from the issuer of every certificate it verifies: a
    certificate whose CA has no CRL in the file, or whose CRL is past its nextUpdate, fails the
    handshake too (fail closed). The file is read once; a new CRL takes a restart."""
    if "-----BEGIN X509 CRL-----" not in crl_file.read_text(errors="replace"):
        raise ValueError(f"{crl_file}: no PEM CRL (-----BEGIN X509 CRL-----) in it")
    context.load_verify_locations(cafile=crl_file)  # OpenSSL loads CRLs and certificates alike
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def certificate_names(peer_cert: dict[str, Any] | None) -> frozenset[str]:
    """The subject common names and SAN DNS names of a certificate as
    ``SSLSocket.getpeercert()`` returns it (an empty set for none)."""
    if not peer_cert:
        return frozenset()
    names = {
        value for rdn in peer_cert.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names |= {value for kind, value in peer_cert.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(names)


def certificate_names_ae(peer_cert: dict[str, Any] | None, ae_title: str) -> bool:
    """True when the certificate names ``ae_title`` (CN or SAN DNS, exactly)."""
    return ae_title.strip() in certificate_names(peer_cert)


# -- a development certificate authority ---------------------------------------------------------


@dataclass(frozen=True)
class DevPki:
    """Files of a development PKI: a CA, a server certificate for this host (also usable as our
    client certificate: both key usages) and one client certificate per AE title asked for."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client_cert(self, ae_title: str) -> Path:
        return self.folder / f"client-{ae_title}.pem"

    def client_key(self, ae_title: str) -> Path:
        return self.folder / f"client-{ae_title}.key"

    @property
    def crl(self) -> Path:
        return self.folder / "ca.crl"


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    # RSA: DCMTK's default BCP 195 profile negotiates ECDHE-RSA suites.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject_cn: str,
    key: Any,
    issuer: tuple[Any, Any] | None,
    *,
    ca: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    days: int = 825,
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_dev_pki(folder: Path, clients: tuple[str, ...] = ()) -> DevPki:
    """Create (once) a development CA and a server certificate for ``localhost``/127.0.0.1 in
    ``folder``, and a client certificate for each AE title in ``clients`` (CN and a SAN DNS name
    = the title, and localhost/127.0.0.1). Never for production: the CA key lies beside the
    certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pki = DevPki(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (pki.ca.exists() and pki.ca_key.exists()):
        ca_key = _key()
        ca_cert = _certificate("DICOM Edge development CA", ca_key, None, ca=True, days=3650)
        _write(pki.ca_key, _pem_key(ca_key), private=True)
        _write(pki.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    wanted: list[tuple[str, Path, Path, tuple[str, ...], tuple[str, ...]]] = [
        ("edge-server", pki.server_cert, pki.server_key, ("localhost",), ("127.0.0.1", "::1"))
    ]
    # Client certificates serve test peers as their server certificates too (a C-MOVE
    # destination on this host): localhost names beside the AE title.
    wanted += [
        (t, pki.client_cert(t), pki.client_key(t), (t, "localhost"), ("127.0.0.1",))
        for t in clients
    ]
    for cn, cert_path, key_path, dns, ips in wanted:
        if cert_path.exists() and key_path.exists():
            continue
        key = _key()
        cert = _certificate(cn, key, (ca_cert, ca_key), dns=dns, ips=ips)
        _write(key_path, _pem_key(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return pki


def write_dev_crl(pki: DevPki, revoked: tuple[Path, ...] = (), *, days: int = 7) -> Path:
    """Write ``pki.crl``: a CRL signed by the development CA listing the certificates in
    ``revoked`` (PEM files), valid for ``days``. For trying and testing revocation; a real CA
    publishes its own CRL."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=days))
    )
    for path in revoked:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    _write(pki.crl, crl.public_bytes(serialization.Encoding.PEM))
    return pki.crl
