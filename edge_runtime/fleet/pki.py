"""The operator's small X.509 PKI for MQTT over TLS: a CA, the broker's server certificate,
and one client certificate per device (and one for the operator).

mosquitto with ``use_identity_as_username true`` takes a client certificate's common name as
the user name, and the ACL grants each device only its own ``devices/<id>/`` topics: the
common name *is* the device id, so the certificate decides what a device may publish.
Keys are EC P-256 (fast on a Pi, accepted by every TLS stack mosquitto and paho use).
These functions take and return objects and PEM bytes; writing files is the caller's.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_runtime.exceptions import BadDataError

CA_DAYS = 3650
CERT_DAYS = 3650  # a device in a field cabinet: re-issuing means visiting it; revoke by ACL instead


class PkiError(BadDataError):
    """A certificate or key that cannot be used: unreadable, not from this CA, or not matching."""


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the device must start unattended; the file is mode 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    """An EC private key from PEM; anything else is a PkiError naming ``what``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what}: expected an EC private key, found {type(key).__name__}")
    return key


def load_cert(data: bytes, what: str) -> x509.Certificate:
    """A certificate from PEM; anything else is a PkiError naming ``what``."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{what}: not a PEM certificate ({exc})") from exc


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str = "edge-runtime fleet CA", days: int = CA_DAYS) -> x509.Certificate:
    """A self-signed CA certificate that may sign certificates but no further CAs."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    days: int = CERT_DAYS,
) -> x509.Certificate:
    """A leaf certificate for ``key``: a TLS client (CN = device id) or, with ``server_names``,
    the broker (each name a DNS name or an IP address in the subjectAltName)."""
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in dict.fromkeys(server_names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def check_issued(cert: x509.Certificate, ca: x509.Certificate, key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """Why ``cert`` cannot be kept for ``key`` and ``common_name`` under ``ca``; empty if it can."""
    if cert.issuer != ca.subject:
        return f"issued by {cert.issuer.rfc4514_string()}, not by this CA"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "its signature does not verify against this CA"
    if cert.public_key() != key.public_key():
        return "it does not match the private key beside it"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [common_name]:
        return f"its common name is not {common_name!r}"
    if cert.not_valid_after_utc <= _now():
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""


__all__ = ["PkiError", "cert_pem", "check_issued", "issue", "key_pem", "load_cert", "load_key", "make_ca", "new_key"]
