"""The remote planner's HTTP(S) exchange: one POST under one overall deadline, a bounded answer, and
redirects that never carry the API key to another origin. Standard library only (``http.client``).

- **Deadline**: ``timeout_s`` bounds the whole exchange (connect, TLS handshake, sending, the status
  line, headers and body, any redirect), not each socket read: a timer shuts the socket down when the
  deadline passes, which wakes a read blocked on a server that trickles one byte at a time.
- **Size**: an answer whose ``Content-Length`` or whose bytes read exceed ``max_bytes`` is refused
  (:class:`AnswerTooLarge`) without reading the rest.
- **Redirects**: 307 and 308 are followed (at most :data:`MAX_REDIRECTS`, the same POST and body, the
  same deadline); the ``Authorization`` header goes only to the origin (scheme, host, port) it was
  configured for. 301, 302 and 303 would turn the POST into a GET, so they are refused
  (:class:`RedirectRefused`) with the address to configure instead.
- Environment proxies (``http_proxy``) are not used: a planner server is reached directly.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

MAX_REDIRECTS = 3
FOLLOWED = (307, 308)
REFUSED = (301, 302, 303)
_CHUNK = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """No complete answer within the request's deadline."""


class AnswerTooLarge(ValueError):
    """The answer is larger than allowed; ``size`` is what the server announced or what was read."""

    def __init__(self, size: int, limit: int, announced: bool) -> None:
        self.size, self.limit, self.announced = size, limit, announced
        what = f"announces {size} bytes" if announced else f"ran past {limit} bytes"
        super().__init__(f"the answer {what}, over the limit of {limit} bytes")


class RedirectRefused(ValueError):
    """A redirect this client does not follow (it would change the POST, or too many)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes
    url: str  # the address that answered (after redirects)


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, with the scheme's default port filled in."""
    p = urllib.parse.urlsplit(url)
    scheme = p.scheme.lower()
    return scheme, (p.hostname or "").lower(), p.port or (443 if scheme == "https" else 80)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Deadline:
    """Shuts the attached socket down when the deadline passes, so a blocked read or write returns."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            self.expired = True
            raise DeadlineExceeded("deadline passed")

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:  # the plain socket's shutdown, also for an SSLSocket (whose own would drop its TLS state)
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        """Call before the socket is closed: the timer never touches a closed (reused) descriptor."""
        with self._lock:
            self._timer.cancel()
            self._sock = None


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=max(deadline.left(), 1e-3))
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.attach(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, deadline: _Deadline, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=max(deadline.left(), 1e-3), context=context)
        self._deadline = deadline

    def connect(self) -> None:  # TCP, then a TLS handshake that the deadline can interrupt
        http.client.HTTPConnection.connect(self)
        self._deadline.attach(self.sock)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self._deadline.attach(self.sock)
        self.sock.settimeout(max(self._deadline.left(), 1e-3))
        self.sock.do_handshake()


def _once(url: str, data: bytes, headers: dict, deadline: _Deadline, max_bytes: int,
          context: ssl.SSLContext | None) -> tuple[http.client.HTTPResponse, bytes]:
    scheme, host, port = origin(url)
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme == "https":
        conn: http.client.HTTPConnection = _HTTPSConnection(host, port, deadline,
                                                            context or ssl.create_default_context())
    else:
        conn = _HTTPConnection(host, port, deadline)
    try:
        conn.request("POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        announced = resp.getheader("Content-Length")
        if announced is not None and announced.strip().isdigit() and int(announced) > max_bytes:
            raise AnswerTooLarge(int(announced), max_bytes, announced=True)
        chunks, n = [], 0
        while True:
            deadline.check()
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline.left(), 1e-3))
            chunk = resp.read(min(_CHUNK, max_bytes + 1 - n))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
            if n > max_bytes:
                raise AnswerTooLarge(n, max_bytes, announced=False)
        if deadline.expired:  # a body read until the connection closed: the deadline's shutdown closed it
            raise DeadlineExceeded("deadline passed")
        return resp, b"".join(chunks)
    finally:
        deadline.attach(None)  # detached before close: the timer never touches a closed descriptor
        conn.close()


def post(url: str, data: bytes, headers: dict, *, timeout_s: float, max_bytes: int,
         context: ssl.SSLContext | None = None) -> Response:
    """POST ``data`` to ``url`` and return the answer (any status). Raises :class:`DeadlineExceeded`,
    :class:`AnswerTooLarge`, :class:`RedirectRefused`, ``OSError`` (connection, TLS) or
    ``http.client.HTTPException`` (a broken answer)."""
    deadline = _Deadline(timeout_s)
    home = origin(url)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp, body = _once(url, data, headers, deadline, max_bytes, context)
            except (AnswerTooLarge, RedirectRefused):
                raise
            except (OSError, http.client.HTTPException) as e:
                if deadline.expired or deadline.left() <= 0:
                    raise DeadlineExceeded(f"no complete answer within {timeout_s:g} s") from e
                raise
            location = resp.getheader("Location")
            if resp.status in REFUSED or (resp.status in FOLLOWED and not location):
                raise RedirectRefused(f"HTTP {resp.status} {resp.reason} to {location!r}; a POST is only re-sent on "
                                      f"307/308: set the planner address to the new location")
            if resp.status not in FOLLOWED:
                return Response(resp.status, resp.reason, body, url)
            url = urllib.parse.urljoin(url, location)
            if origin(url)[0] not in ("http", "https"):
                raise RedirectRefused(f"HTTP {resp.status} to {location!r}, which is not an http(s) address")
            if origin(url) != home:  # never hand the key to another origin (nor over a downgrade to http)
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects, the last to {url}")
    finally:
        deadline.cancel()
