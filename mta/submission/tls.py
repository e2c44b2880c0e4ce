"""TLS for SMTP submission: STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

Uses the operator's certificate, or a self-signed one kept in the data directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sesame.log import event
from sesame.settings import Settings

log = logging.getLogger(__name__)

CERT_FILE = "smtp-cert.pem"
KEY_FILE = "smtp-key.pem"

# RSA 2048 is what every SMTP client can use (RFC 8301 requires at least 1024 and
# recommends 2048 for DKIM; the same floor is the common TLS baseline).
_KEY_BITS = 2048
# A self-signed certificate is trusted by pinning, not by expiry, so it may live
# long; ten years keeps it from expiring under a long-running install.
_VALID_DAYS = 3650


def server_context(settings: Settings) -> ssl.SSLContext:
    """Return the server-side TLS context for both submission listeners."""
    if settings.tls_cert is not None:
        cert, key = settings.tls_cert, settings.tls_key
    else:
        cert, key = self_signed(settings.data_dir, settings.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # RFC 8996 deprecates TLS 1.0 and 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def self_signed(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """Return the self-signed certificate and key in data_dir, creating them once."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    data_dir.mkdir(parents=True, exist_ok=True)
    # Several processes may start at once; one creates the pair, the others reuse it.
    with open(data_dir / ".smtp-cert.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert_path.exists() and key_path.exists()):
            _create(cert_path, key_path, hostname)
    return cert_path, key_path


def _create(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname == "localhost":
        alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    event(log, "self-signed certificate created", path=str(cert_path), host=hostname)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically, created with its final mode (no chmod race)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
