"""TLS credentials from PEM files: a server's (optionally requiring client certificates) and a channel's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc


class TlsConfigError(SystemExit):
    """A TLS setting is incomplete or names a file that cannot be read; exits with the message."""


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{setting}: expected a PEM file, got {len(data)} bytes without a PEM header in {path!r}")
    return data


def server_credentials(
    cert: str, key: str, client_ca: str = "", prefix: str = "FUNNEL_TLS"
) -> grpc.ServerCredentials | None:
    """Server TLS from a certificate chain and key (None when neither is set: plaintext). With ``client_ca``,
    clients must present a certificate it signed (mutual TLS)."""
    if not cert and not key:
        if client_ca:
            raise TlsConfigError(
                f"{prefix}_CLIENT_CA needs {prefix}_CERT and {prefix}_KEY: client certificates need TLS"
            )
        return None
    if not cert or not key:
        missing = f"{prefix}_CERT" if not cert else f"{prefix}_KEY"
        raise TlsConfigError(f"TLS needs both a certificate and its key: {missing} is not set")
    pair = (_read(key, f"{prefix}_KEY"), _read(cert, f"{prefix}_CERT"))
    ca = _read(client_ca, f"{prefix}_CLIENT_CA") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(
    ca: str = "", cert: str = "", key: str = "", prefix: str = "FUNNEL_TLS"
) -> grpc.ChannelCredentials | None:
    """Channel TLS that trusts ``ca`` (None when no TLS setting is set: plaintext); with ``cert`` and ``key`` the
    client also presents its own certificate (mutual TLS)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        missing = f"{prefix}_CERT" if not cert else f"{prefix}_KEY"
        raise TlsConfigError(f"a client certificate needs both the certificate and its key: {missing} is not set")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, f"{prefix}_CA") if ca else None,
        private_key=_read(key, f"{prefix}_KEY") if key else None,
        certificate_chain=_read(cert, f"{prefix}_CERT") if cert else None,
    )


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    server_name: str = "",
) -> grpc.Channel:
    """A plaintext channel, or a TLS one with ``credentials``; ``server_name`` is the name the server's
    certificate must carry when the target is an address (a replica's IP) rather than that name."""
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    if server_name:
        options = [*options, ("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(target, credentials, options=list(options))


def target_host(target: str) -> str:
    """The host a target names (``dns:///retrieval:50052`` → ``retrieval``; ``127.0.0.1:1`` → ``127.0.0.1``)."""
    name = target.split("///", 1)[-1] if target.startswith("dns:") else target
    host = name.rpartition(":")[0] if ":" in name else name
    return host.strip("[]")
