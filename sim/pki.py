"""A throw-away certificate authority for the simulated castle and the tests.

The Vault stand-in, a real OpenBao server in the tests and anything else that speaks TLS in the
simulation get their certificates here, so the prober's TLS step is exercised exactly as in the lab:
a private CA, a server certificate naming only the MagicDNS FQDN (SAN only, empty subject), and a
client that trusts nothing but that CA. Keys are EC P-256 and validity is short on purpose: these
certificates exist for one run.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Clocks of the simulated parts are the host's; a few minutes of back-dating absorbs rounding only.
_BACKDATE = timedelta(minutes=5)
DEFAULT_VALIDITY = timedelta(days=1)


@dataclass(frozen=True)
class CAFiles:
    """Where `CertificateAuthority.write` put the CA certificate and its key."""

    cert: Path
    key: Path


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A self-signed CA that issues short-lived server certificates."""

    def __init__(self, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.name = name
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str, validity: timedelta = DEFAULT_VALIDITY) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _private_pem(self._key)

    def issue(
        self,
        dns_names: list[str],
        ip_addresses: list[str] | None = None,
        validity: timedelta = DEFAULT_VALIDITY,
    ) -> tuple[bytes, bytes]:
        """A server certificate for exactly these names; returns (cert_pem, key_pem)."""
        ips = [ipaddress.ip_address(a) for a in (ip_addresses or [])]
        if not dns_names and not ips:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ip) for ip in ips]
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            # Empty subject: names live in the SAN only (RFC 5280 then requires the SAN to be critical),
            # so no client can accidentally match on a common name.
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + validity, self.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)

    def write(self, directory: Path) -> CAFiles:
        """Write `<name>.crt` (what clients trust) and `<name>.key` (mode 0600) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)
        files = CAFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
        files.cert.write_bytes(self.cert_pem)
        write_private(files.key, self.key_pem)
        return files


def write_private(path: Path, data: bytes) -> Path:
    """Write key material readable by the owner only."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)
    return path


def write_pair(directory: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write an issued certificate and its key as `<stem>.crt` / `<stem>.key` (for servers that read files)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(cert_pem)
    return cert_path, write_private(directory / f"{stem}.key", key_pem)
