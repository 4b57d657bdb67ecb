"""A small HTTP file server on 127.0.0.1 for the download tests: ranges, broken transfers, a request log."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Served:
    """What the server holds and what it was asked.

    Attributes:
        files: URL path (``/name``) → bytes.
        cut: URL path → bytes to send in the next response for it before the
            connection is dropped (the response announces the full length).
        ranges: whether ``Range`` requests are answered with 206.
        requests: ``(path, Range header or None)`` of every request, in order.
    """

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    ranges: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}?download=1"


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            wanted = self.headers.get("Range")
            served.requests.append((path, wanted))
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and served.ranges else 0
            if start >= len(body) > 0:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = served.cut.pop(path, None)
            self.wfile.write(body[start:] if cut is None else body[start : start + cut])
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve() -> Iterator[Served]:
    """A server on 127.0.0.1 (a free port) for the duration of the block."""
    served = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_study(path: Path, data: list[dict[str, Any]], budget: str | Path = "recipe.yaml") -> Path:
    """A study file with these ``data:`` entries and one ``cpu`` budget."""
    study = {
        "name": path.stem,
        "description": "a study for the tests",
        "budgets": {"cpu": str(budget)},
        "data": data,
        "evaluate": {"split": "test", "checkpoint": "best"},
        "metrics": ["auc", "accuracy"],
        "published": {"source": "none", "rows": [{"method": "chance", "auc": 0.5, "accuracy": 0.5}]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
