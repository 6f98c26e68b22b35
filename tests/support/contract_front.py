"""A recording front on 127.0.0.1 for an emulator: every request is checked against Google's contract, then
forwarded unchanged; answers stream back.

The session's emulator fixtures hand out a front's URL instead of the emulator's own port, so every request
the package sends in the tests (triggers in the triggerer, gcsfs in setup and teardown, the lifecycle proxy's
forwards) passes :func:`tests.support.api_contract.check_request`. With ``check_answers`` the front checks the
upstream's JSON answers too (used in front of the capture's recording endpoint, which pretends to be BigQuery).
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.api_contract import LOG, ContractLog, check_request, check_response

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
        "proxy-connection"}
_CHUNK = 64 * 1024


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: 200 triggers connecting at once overflow it, and each dropped SYN costs
    # the client a 1-3-7 s retransmit (a 200-trigger test took 109 s instead of a few).
    request_queue_size = 1024
    daemon_threads = True


class ContractFront:
    """Check and forward to ``upstream`` (``http://127.0.0.1:P``); ``url`` is the front's own base URL."""

    def __init__(self, upstream: str, *, log: ContractLog = LOG, check_answers: bool = False,
                 relayed: set[str] | None = None) -> None:
        """``relayed``: with ``check_answers``, answers whose sha256 is in it are not checked (another front
        relayed them from the emulator verbatim); without, this front adds the sha256 of each answer to it."""
        self.upstream = upstream.rstrip("/")
        # (HTTP method, path, Authorization header) of every request, for tests asserting who made each one.
        self.seen: list[tuple[str, str, str]] = []
        parts = urlsplit(self.upstream)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        local = threading.local()  # one keep-alive connection to the upstream per server thread
        owner = self

        def connection(fresh: bool = False) -> http.client.HTTPConnection:
            if fresh or getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection(host, port, timeout=300)
            return local.conn

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body chunks go out as separate writes: without this each answer waits for the
            # client's delayed ACK (~40 ms), as main found for the capture endpoint.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _relay(self) -> None:
                body = self._body()
                owner.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                content_type = self.headers.get("Content-Type") or ""
                log.record(check_request(self.command, self.path, body, content_type))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"content-length"}}
                headers["Content-Length"] = str(len(body))
                for attempt in (0, 1):  # a keep-alive connection the upstream closed meanwhile: reconnect once
                    conn = connection(fresh=attempt == 1)
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        break
                    except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                        conn.close()
                        if attempt:
                            raise
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() in _HOP or key.lower() == "content-length":
                        continue
                    if key.lower() == "location":  # resumable-upload sessions must come back through the front
                        value = value.replace(owner.upstream, owner.url)
                    self.send_header(key, value)
                if check_answers or relayed is not None:
                    data = resp.read()
                    digest = hashlib.sha256(data).hexdigest()
                    if not check_answers:
                        relayed.add(digest)  # type: ignore[union-attr]
                    elif relayed is None or digest not in relayed:
                        log.add("answer", check_response(self.command, self.path, resp.status, data))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if resp.status in (204, 304):  # no body allowed
                    resp.read()
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while chunk := resp.read(_CHUNK):
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    # A client may stop reading a streamed download early (a ranged read it has enough of).
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def do_HEAD(self) -> None:
                body_less = self._body()
                log.record(check_request("HEAD", self.path, body_less))
                conn = connection(fresh=True)
                conn.request("HEAD", self.path, headers=dict(self.headers.items()))
                resp = conn.getresponse()
                resp.read()
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.end_headers()

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="contract-front", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def answers_checked(url: str, relayed: set[str] | None = None) -> Iterator[str]:
    """A front of ``url`` that also checks its JSON answers against the response schemas (for the capture's
    recording endpoint, which answers dbt as BigQuery would), except those in ``relayed`` (the emulator's own,
    which the endpoint forwarded); yields the URL to use instead of ``url``."""
    front = ContractFront(url, check_answers=True, relayed=relayed)
    try:
        yield front.url
    finally:
        front.stop()
