"""TLS contexts for the SCP and the SCU, from the ``tls`` section of the configuration.

* SCP (:func:`server_context`): our certificate and key; with ``ca_certificates``
  a client certificate is verified when presented, and with
  ``require_client_certificate`` one is required (mutual TLS).
* SCU (:func:`client_context`): verifies the destination's certificate against
  ``ca_certificates`` (or the system's CAs) and its host name; presents our own
  certificate when one is configured (for peers that require mutual TLS).
* Both: at least ``minimum_version`` (TLS 1.2 by default).

A private key that the group or others can read is refused (start-up error):
the node's identity is only as safe as that file.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from config.errors import ConfigError
from config.schema import Tls

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(tls: Tls) -> ssl.SSLContext:
    """The SCP's context (``tls.enabled`` must be set)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[tls.minimum_version]
    _load_identity(context, tls)
    if tls.ca_certificates is not None:
        _load_cas(context, tls.ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def client_context(tls: Tls) -> ssl.SSLContext:
    """The SCU's context: the server is verified, our certificate presented if we have one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[tls.minimum_version]
    if tls.ca_certificates is not None:
        _load_cas(context, tls.ca_certificates)
    else:
        context.load_default_certs()
    if tls.certificate is not None and tls.private_key is not None:
        _load_identity(context, tls)
    return context


def check_private_key(path: Path) -> None:
    """Refuse a key file that is missing or readable by the group or others."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"tls.private_key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"tls.private_key {path}: mode {stat.filemode(mode)} lets others read it; "
            f"chmod 600 {path}"
        )


def _load_identity(context: ssl.SSLContext, tls: Tls) -> None:
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("tls: certificate and private_key are needed")
    check_private_key(tls.private_key)
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls.certificate {tls.certificate} / tls.private_key {tls.private_key}: {exc}"
        ) from exc


def _load_cas(context: ssl.SSLContext, path: Path) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.ca_certificates {path}: {exc}") from exc
