"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the test S3 server.

Requests are forwarded byte-for-byte (Host header included, so SigV4 signatures stay
valid). Rules make chosen requests fail: answer an S3-style 5xx error, or read part of
the request body and drop the connection without an answer. Every request is logged,
so tests can also check what the client did (multipart parts, retries, aborts).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}
_ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}


@dataclass
class Rule:
    action: str  # "status", "drop" (cut the request) or "truncate" (cut the answer's body)
    method: str | None = None
    path: str | None = None  # regex searched in the path (without query)
    query: str | None = None  # regex searched in the query string
    times: int = 1  # how many matching requests fail; -1 = all
    status: int = 503
    after_bytes: int = 1024  # body bytes read ("drop") or sent ("truncate") before the cut

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times == 0:
            return False
        if self.method and self.method != method:
            return False
        if self.path and not re.search(self.path, path):
            return False
        if self.query is not None and not re.search(self.query, query):
            return False
        return True


@dataclass
class Logged:
    method: str
    path: str
    query: str
    outcome: str  # "forwarded <status>", "injected <status>", "dropped"


class FaultProxy:
    """Start with :meth:`start`, point clients at :attr:`endpoint`, stop with :meth:`stop`."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.rules: list[Rule] = []
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, *, status: int = 503, times: int = 1, method=None, path=None, query=None) -> Rule:
        return self._add(Rule("status", method, path, query, times, status=status))

    def drop(self, *, after_bytes: int = 1024, times: int = 1, method=None, path=None, query=None) -> Rule:
        return self._add(Rule("drop", method, path, query, times, after_bytes=after_bytes))

    def truncate(self, *, after_bytes: int = 1024, times: int = 1, method=None, path=None, query=None) -> Rule:
        return self._add(Rule("truncate", method, path, query, times, after_bytes=after_bytes))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def requests(self, method: str | None = None, query: str | None = None) -> list[Logged]:
        with self._lock:
            return [
                r for r in self.log
                if (method is None or r.method == method) and (query is None or re.search(query, r.query))
            ]

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take_rule(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query):
                    if rule.times > 0:
                        rule.times -= 1
                    return rule
        return None

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _read_body(self, limit: int | None = None) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = bytearray()
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while True:
                                trailer = self.rfile.readline()
                                raw += trailer
                                if trailer in (b"\r\n", b"\n", b""):
                                    return bytes(raw)
                        raw += self.rfile.read(size + 2)
                        if limit is not None and len(raw) >= limit:
                            return bytes(raw)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length if limit is None else min(length, limit))

            def _handle(self):
                split = urlsplit(self.path)
                method, path, query = self.command, split.path, split.query
                rule = proxy._take_rule(method, path, query)
                if rule is not None and rule.action == "drop":
                    self._read_body(limit=rule.after_bytes)
                    proxy._record(Logged(method, path, query, "dropped"))
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                body = self._read_body()
                if rule is not None and rule.action == "status":
                    code = _ERROR_CODES.get(rule.status, "InternalError")
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>injected fault</Message><Resource>{path}</Resource></Error>"
                    ).encode()
                    self.send_response_only(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(payload)
                    proxy._record(Logged(method, path, query, f"injected {rule.status}"))
                    return
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                    chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                    for name, value in self.headers.items():
                        if name.lower() in _HOP_HEADERS and not (chunked and name.lower() == "transfer-encoding"):
                            continue
                        conn.putheader(name, value)
                    conn.endheaders()
                    if body:
                        conn.send(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response_only(resp.status, resp.reason)
                    for name, value in resp.getheaders():
                        if name.lower() in _HOP_HEADERS or (name.lower() == "content-length" and method != "HEAD"):
                            continue
                        self.send_header(name, value)
                    if method != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if rule is not None and rule.action == "truncate" and method != "HEAD":
                        self.wfile.write(data[: rule.after_bytes])
                        self.wfile.flush()
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        proxy._record(Logged(method, path, query, "truncated"))
                        return
                    if method != "HEAD":
                        self.wfile.write(data)
                    proxy._record(Logged(method, path, query, f"forwarded {resp.status}"))
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
