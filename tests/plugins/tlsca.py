"""A throwaway certificate authority for loopback TLS servers (trustme).

``test_ca`` signs a server certificate for localhost/127.0.0.1/::1; ``other_ca`` is an
unrelated CA whose certificates a client configured with ``test_ca`` must refuse.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class TestCA:
    ca_file: Path  # PEM of the CA: what the client trusts (``ca_file`` in config)
    cert_file: Path  # server certificate chain (PEM)
    key_file: Path  # server private key (PEM)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _make(directory: Path, name: str) -> TestCA:
    ca = trustme.CA(organization_name=f"mailtracker {name} CA")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / f"{name}-ca.pem"
    cert_file = directory / f"{name}-cert.pem"
    key_file = directory / f"{name}-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    for f in (ca_file, cert_file, key_file):
        f.chmod(0o644)
    return TestCA(ca_file, cert_file, key_file)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return _make(tmp_path_factory.mktemp("tls"), "test")


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return _make(tmp_path_factory.mktemp("tls-other"), "other")
