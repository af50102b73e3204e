"""Transport security of the connection to the server: which addresses need TLS, which CA to trust.

A password and every file cross the connection, so ``http://`` is refused for
any server but this machine's own loopback unless the user says
``--insecure-http`` at login (then ``websync status`` says "not encrypted").
A box with a self-signed certificate is trusted through its CA file
(``--ca FILE``), never by turning verification off.
"""

from __future__ import annotations

import ipaddress
import ssl

import httpx

from .errors import ConfigError

__all__ = ["certificate_problem", "check_server", "encrypted", "verify"]


def is_loopback(url: str) -> bool:
    """Whether *url* names this machine (``localhost``, 127.0.0.0/8 or ``::1``)."""
    host = httpx.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encrypted(url: str) -> bool:
    """Whether traffic to *url* is protected: https, or never leaving this machine."""
    return httpx.URL(url).scheme == "https" or is_loopback(url)


def check_server(url: str, *, insecure_http: bool) -> None:
    """Refuse a plain ``http://`` server beyond loopback unless the user chose it (`ConfigError`)."""
    if not encrypted(url) and not insecure_http:
        raise ConfigError(
            f"{url} is not encrypted: your password and files would cross the network readable by anyone on the way;"
            " use https:// (see the server's docs), or --insecure-http if this network is yours alone"
        )


def verify(ca_file: str) -> ssl.SSLContext | bool:
    """What httpx verifies the server's certificate with: the system's CAs, or those in *ca_file*."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"can't use the CA file {ca_file}: {exc}") from exc


def certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was not accepted, if that is what *exc* comes from; else None.

    httpx's own message for it can be empty (seen with trio's TLS), so the
    reason is dug out of the exception chain.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            reason = seen.verify_message or seen.reason or str(seen)
            return f"the server's certificate was not accepted ({reason}); if the box uses its own CA, log in with --ca FILE"
        if isinstance(seen, ssl.SSLError):
            return f"the TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    return None
