"""A throwaway certificate authority for HTTPS origins reached through CONNECT tunnels."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsCa:
    """A test CA (trustme) with a certificate for 127.0.0.1, as contexts and as a PEM file for curl."""

    ca: trustme.CA
    pem: Path

    @classmethod
    def create(cls, directory: Path) -> TlsCa:
        ca = trustme.CA()
        pem = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        return cls(ca, pem)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context
