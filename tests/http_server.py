"""A local HTTP file server with fault injection, for download tests. Binds 127.0.0.1 only; never reaches out.

    with FaultServer(tmp_path) as server:
        server.fail("/a.bin", "drop", after_bytes=1000)   # first request: cut after 1000 bytes; then normal
        fetch(server.url("/a.bin"), dest)
        assert "Range" in server.requests_for("/a.bin")[1].headers

Faults, each for the next ``times`` requests of a path (``times=None``: every request):

``status``         answer with ``code`` (404, 403, 500, 503, ...)
``drop``           send the headers (full length) and ``after_bytes`` body bytes, then close the connection
``stall``          send the headers and ``after_bytes`` body bytes, then go silent for ``seconds``
``truncate_gzip``  serve only the first half of the file, with a matching Content-Length (HTTP-level complete)
``no_range``       ignore a Range header and send the whole file with 200
``wrong_range``    answer a Range request with 206 but a Content-Range that starts at 0

Files are served from ``root``; ``Range: bytes=N-`` and ``bytes=N-M`` are answered with 206 (416 past the end).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULT_KINDS = {"status", "drop", "stall", "truncate_gzip", "no_range", "wrong_range"}


@dataclass
class Fault:
    kind: str
    times: int | None = 1
    code: int = 500
    after_bytes: int = 0
    seconds: float = 5.0


@dataclass
class RequestRecord:
    path: str
    headers: dict
    status: int | None = None
    fault: str | None = None


@dataclass
class _State:
    root: Path
    faults: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(path, [])
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
            return fault


class FaultServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread, serving ``root``."""

    def __init__(self, root: str | Path):
        self.state = _State(root=Path(root))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True  # a stalled handler must not keep the test process alive
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FaultServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.state.stopping.set()  # wakes stalled handlers
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def fail(self, path: str, kind: str, *, times: int | None = 1, **options) -> None:
        """Queue a fault for the next ``times`` requests of ``path`` (faults queued on one path apply in order)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose one of {sorted(FAULT_KINDS)}")
        with self.state.lock:
            self.state.faults.setdefault("/" + path.lstrip("/"), []).append(Fault(kind, times, **options))

    @property
    def requests(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.requests)

    def requests_for(self, path: str) -> list[RequestRecord]:
        path = "/" + path.lstrip("/")
        return [r for r in self.requests if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.0"  # one request per connection: a dropped connection affects one request only

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        record = RequestRecord(path=path, headers=dict(self.headers.items()))
        with self.state.lock:
            self.state.requests.append(record)
        fault = self.state.take_fault(path)
        record.fault = fault.kind if fault else None
        if fault and fault.kind == "status":
            return self._send_status(record, fault.code)
        file = (self.state.root / path.lstrip("/")).resolve()
        if self.state.root.resolve() not in file.parents or not file.is_file():
            return self._send_status(record, 404)
        data = file.read_bytes()
        if fault and fault.kind == "truncate_gzip":
            data = data[: len(data) // 2]
        self._send_file(record, data, fault)

    def _send_status(self, record: RequestRecord, code: int) -> None:
        record.status = code
        body = f"{code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, record: RequestRecord, data: bytes, fault: Fault | None) -> None:
        start, end = 0, len(data) - 1
        wanted = self._range(len(data)) if not (fault and fault.kind == "no_range") else None
        if wanted == "unsatisfiable":
            record.status = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if wanted:
            start, end = wanted
            record.status = 206
            self.send_response(206)
            shown_start = 0 if fault and fault.kind == "wrong_range" else start
            self.send_header("Content-Range", f"bytes {shown_start}-{end}/{len(data)}")
        else:
            record.status = 200
            self.send_response(200)
        body = data[start : end + 1]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if fault and fault.kind in ("drop", "stall"):
            self.wfile.write(body[: fault.after_bytes])
            self.wfile.flush()
            if fault.kind == "stall":
                self.state.stopping.wait(fault.seconds)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _range(self, size: int):
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
        if not match:
            return None
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else size - 1
        if start >= size:
            return "unsatisfiable"
        return start, min(end, size - 1)


def serve(root: str | Path) -> FaultServer:
    """Start a server on ``root``; the caller closes it (or use ``with FaultServer(root) as server``)."""
    server = FaultServer(root)
    server.start()
    return server
