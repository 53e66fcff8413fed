"""Throwaway certificates for TLS try-outs, tests and benchmarks: a CA, a server certificate for
localhost and 127.0.0.1, a client certificate (mutual TLS), an expired server certificate, and a
second, untrusted CA with its own client certificate. Never for production: the keys are written
unencrypted next to the certificates.

    python -m deploy.certs OUT_DIR     # then: genserve serve --tls-cert OUT_DIR/server.pem --tls-key OUT_DIR/server.key
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the server's certificates and the good client certificate chain to
    server_cert: Path  # localhost and 127.0.0.1, valid from yesterday for 30 days
    server_key: Path
    expired_cert: Path  # the same key and names, validity ended yesterday
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # another CA, with its own client certificate
    rogue_cert: Path
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
    days: tuple[int, int] = (-1, 30),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_pki(out: Path) -> Pki:
    """Write a fresh set into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, rogue_ca_key = _key(), _key()
    ca = _certificate("genserve test CA", ca_key, None, ca=True)
    rogue_ca = _certificate("rogue CA", rogue_ca_key, None, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _certificate("localhost", server_key, (ca, ca_key), server=True)
    expired = _certificate("localhost", server_key, (ca, ca_key), server=True, days=(-30, -1))
    client = _certificate("client", client_key, (ca, ca_key))
    rogue = _certificate("client", rogue_key, (rogue_ca, rogue_ca_key))
    return Pki(
        ca=_write(out / "ca.pem", ca.public_bytes(pem)),
        server_cert=_write(out / "server.pem", server.public_bytes(pem)),
        server_key=_write(out / "server.key", _pem_key(server_key)),
        expired_cert=_write(out / "expired.pem", expired.public_bytes(pem)),
        client_cert=_write(out / "client.pem", client.public_bytes(pem)),
        client_key=_write(out / "client.key", _pem_key(client_key)),
        rogue_ca=_write(out / "rogue-ca.pem", rogue_ca.public_bytes(pem)),
        rogue_cert=_write(out / "rogue.pem", rogue.public_bytes(pem)),
        rogue_key=_write(out / "rogue.key", _pem_key(rogue_key)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the PEM files into")
    pki = make_pki(parser.parse_args().out)
    for field, path in vars(pki).items():
        print(f"{field:13s} {path}")


if __name__ == "__main__":
    main()
