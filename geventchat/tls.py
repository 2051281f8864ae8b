"""TLS contexts for the server (``--tls-cert/--tls-key``) and the client (``--tls``, ``--tls-ca``).

Both are :mod:`gevent.ssl` contexts, so the sockets they wrap cooperate with gevent without monkey-patching. The
server wraps each accepted socket in its own greenlet with ``do_handshake_on_connect=False`` and runs the TLS
handshake under the handshake timeout, so a peer that opens a connection and never finishes the TLS handshake
costs one timer, not a stuck greenlet.
"""

from __future__ import annotations

import ssl

from gevent import ssl as gevent_ssl

__all__ = ["client_context", "server_context"]


def server_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or newer) with the PEM chain ``cert_file`` and key ``key_file`` (or the key
    inside ``cert_file``). Raises :class:`OSError` / :class:`ssl.SSLError` if they cannot be loaded."""
    context: ssl.SSLContext = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client-side context (TLS 1.2 or newer) that verifies the server's certificate and host name against
    ``ca_file`` (PEM), or against the system's trusted CAs when ``ca_file`` is None."""
    # Built by hand: gevent.ssl.create_default_context returns a stdlib (blocking) context.
    context: ssl.SSLContext = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def is_cooperative(context: ssl.SSLContext) -> bool:
    """True if sockets wrapped by ``context`` yield to gevent (a :mod:`gevent.ssl` context, or any context in a
    monkey-patched process) rather than block the whole process."""
    return isinstance(context, gevent_ssl.SSLContext)
