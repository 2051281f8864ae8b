"""TLS on both ends, with a CA and a server certificate generated for the test (``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import sys
import time
from pathlib import Path

import gevent.subprocess
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geventchat import ChatClient, ClosedByServer
from geventchat.client import TLSHandshakeFailed
from geventchat.testing import QUIET, ServerProcess, open_fds, wait_until
from geventchat.tls import client_context

from .faultkit import fresh_client_works, quiet, raw_connect, read_until_closed, serving


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path, label: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"geventchat test CA {label}"))
        .issuer_name(_name(f"geventchat test CA {label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_path, ca_key, ca_cert = make_ca(directory, "good")
    other_ca, _, _ = make_ca(directory, "other")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"ca": str(ca_path), "other_ca": str(other_ca), "cert": str(cert_path), "key": str(key_path)}


def test_tls_conversation_and_certificate_checks(pki: dict[str, str]) -> None:
    with serving(quiet(tls_cert=pki["cert"], tls_key=pki["key"])) as server:
        fds = open_fds()
        tls = client_context(pki["ca"])
        with ChatClient.connect(*server.address, idle_timeout=5, tls=tls) as client:
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert client.request("secret").message == "secret"
            client.quit()
        assert fresh_client_works(server.address, tls=tls)
        with pytest.raises(TLSHandshakeFailed, match="certificate verify failed"):
            ChatClient.connect(*server.address, tls=client_context(pki["other_ca"]))
        with pytest.raises(TypeError, match=r"gevent\.ssl"):
            ChatClient.connect(*server.address, tls=ssl.create_default_context())
        wait_until(lambda: server.stats.current == 0, timeout=5)
        assert server.stats.closed["quit"] == 2
        assert open_fds() == fds


def test_tls_handshake_is_under_the_handshake_timeout(pki: dict[str, str]) -> None:
    with serving(quiet(tls_cert=pki["cert"], tls_key=pki["key"], handshake_timeout=0.3)) as server:
        fds = open_fds()
        silent = raw_connect(server.address)  # never sends a ClientHello
        started = time.monotonic()
        assert read_until_closed(silent) == b""
        assert 0.25 <= time.monotonic() - started < 2.0
        silent.close()
        wait_until(lambda: server.stats.current == 0, timeout=5)
        assert server.stats.closed == {"handshake timeout": 1}
        assert fresh_client_works(server.address, tls=client_context(pki["ca"]))
        wait_until(lambda: server.stats.current == 0, timeout=5)
        assert open_fds() == fds


def test_rejections_are_sent_over_tls(pki: dict[str, str]) -> None:
    with serving(quiet(tls_cert=pki["cert"], tls_key=pki["key"], max_per_ip=1)) as server:
        tls = client_context(pki["ca"])
        with ChatClient.connect(*server.address, idle_timeout=5, tls=tls) as first:
            with pytest.raises(ClosedByServer) as refused:
                ChatClient.connect(*server.address, tls=tls)
            assert refused.value.reason == "too many connections from your address"
            first.quit()


def test_plain_client_against_a_tls_server_is_a_tls_error(pki: dict[str, str]) -> None:
    with serving(quiet(tls_cert=pki["cert"], tls_key=pki["key"])) as server:
        fds = open_fds()
        plain = raw_connect(server.address)
        plain.sendall(b"30\nhello\n")
        assert read_until_closed(plain) == b""  # nothing in clear, not even a bye
        plain.close()
        wait_until(lambda: server.stats.current == 0, timeout=5)
        [(reason, count)] = server.stats.closed.items()
        assert reason == "tls error" and count == 1
        assert fresh_client_works(server.address, tls=client_context(pki["ca"]))
        wait_until(lambda: server.stats.current == 0, timeout=5)
        assert open_fds() == fds


def test_tls_client_against_a_plain_server_fails_clearly() -> None:
    with serving(quiet()) as server, pytest.raises(TLSHandshakeFailed):
        ChatClient.connect(*server.address, tls=client_context(), connect_timeout=5)


def test_command_line_tls_options(pki: dict[str, str]) -> None:
    with ServerProcess(*QUIET, "--tls-cert", pki["cert"], "--tls-key", pki["key"]) as server:
        host, port = server.address
        command = [sys.executable, "-m", "geventchat", "client", "--host", host, "--port", str(port)]
        done = gevent.subprocess.run(
            [*command, "--tls-ca", pki["ca"]], input=b"over tls\n", capture_output=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "我收到了你的信息:over tls" in done.stdout.decode()
        refused = gevent.subprocess.run(
            [*command, "--tls-ca", pki["other_ca"]], input=b"x\n", capture_output=True, timeout=30, check=False
        )
        assert refused.returncode == 1
        assert b"certificate verify failed" in refused.stderr
        assert server.stop() == 0
