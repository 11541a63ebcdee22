"""Downloads x server faults, served from 127.0.0.1: every fault (with and without a known SHA-256)
ends in the library's own RuntimeError naming the URL and what went wrong, within the timeout or
the overall deadline, and leaves nothing in the cache: no partial file under the final name, no
temporary file. A cached good file is never replaced by a failed download."""
import hashlib
import http.server
import io
import threading
import time

import pytest
import torch

from library_errors import ANY_ERROR, expect_library_error
from visionattn import hub

BUF = io.BytesIO()
torch.save({"w": torch.arange(4000, dtype=torch.float32)}, BUF)
BODY = BUF.getvalue()
SHA = hashlib.sha256(BODY).hexdigest()
DRIP_DELAY = 0.05


class Faults(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _head(self, status=200, length=None, ctype="application/octet-stream", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        fault = self.path.strip("/").split("/")[0]
        self.close_connection = True
        if fault == "ok":
            self._head(length=len(BODY))
            self.wfile.write(BODY)
        elif fault == "drip":  # a byte at a time: every read succeeds, the whole never arrives in time
            self._head(length=len(BODY))
            try:
                for b in BODY[:200]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(DRIP_DELAY)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif fault == "truncated":
            self._head(length=len(BODY))
            self.wfile.write(BODY[: len(BODY) // 2])
        elif fault == "chunked_truncated":
            self._head(extra=[("Transfer-Encoding", "chunked")])
            self.wfile.write(b"%x\r\n" % 4096 + BODY[:1000])
        elif fault in ("404", "500", "403"):
            self.send_error(int(fault))
        elif fault == "html":
            page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
            self._head(length=len(page), ctype="text/html")
            self.wfile.write(page)
        elif fault == "html_as_binary":
            page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
            self._head(length=len(page))
            self.wfile.write(page)
        elif fault == "json_error":
            page = b'{"error": "quota exceeded"}'
            self._head(length=len(page), ctype="application/json")
            self.wfile.write(page)
        elif fault == "garbage":
            junk = bytes(range(256)) * 8
            self._head(length=len(junk))
            self.wfile.write(junk)
        elif fault == "empty":
            self._head(length=0)
        elif fault == "close":  # hang up without an answer
            return
        elif fault == "stall_headers":
            time.sleep(1.5)
        elif fault == "redirect_loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "longer_than_announced":
            self._head(length=len(BODY) + 1000)
            self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Faults)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONATTN_OFFLINE", raising=False)
    return tmp_path / "home" / "checkpoints"


# fault -> what the message says (a regular expression)
FAULTS = {
    "drip": "deadline",
    "truncated": "truncated",
    "chunked_truncated": "truncated|connection failed",
    "404": "HTTP 404",
    "403": "HTTP 403",
    "500": "HTTP 500",
    "html": "HTML page",
    "html_as_binary": "HTML page",
    "json_error": "JSON",
    "garbage": "no checkpoint format",
    "empty": "empty",
    "close": "connection failed|could not download",
    "stall_headers": "stalled",
    "redirect_loop": "HTTP 30",
    "longer_than_announced": "truncated",
}
CASES = [(fault, sha) for fault in FAULTS for sha in (None, SHA)] + [("ok", "0" * 64)]


@pytest.mark.parametrize("fault,sha", CASES, ids=[f"{f}-{'hash' if s else 'nohash'}" for f, s in CASES])
def test_server_fault(server, cache, fault, sha):
    url = f"{server}/{fault}/weights.pth"
    start = time.monotonic()
    err = expect_library_error(lambda: hub.download(url, sha, progress=False, timeout=0.5, deadline=1.0),
                               names=[url], types=(RuntimeError,))
    import re

    expected = "SHA-256 mismatch" if fault == "ok" else FAULTS[fault]
    assert re.search(expected, str(err)), str(err)
    assert time.monotonic() - start < 5.0
    leftovers = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert leftovers == [], f"{fault}: left {leftovers} in the cache"


def test_a_good_cached_file_survives_a_failed_download(server, cache):
    path = hub.download(f"{server}/ok/weights.pth", SHA, progress=False)
    assert hub.file_sha256(path) == SHA
    # the same cache name, now fetched from a failing server: the cached file is reused, never touched
    again = hub.download(f"{server}/ok/weights.pth", None, progress=False, timeout=0.5, deadline=1.0)
    assert again == path and hub.file_sha256(path) == SHA
    expect_library_error(lambda: hub.download(f"{server}/truncated/weights.pth", None, progress=False,
                                              filename=path.name + ".other", timeout=0.5), types=(RuntimeError,))
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_an_interrupted_download_leaves_no_file(server, cache, monkeypatch):
    """A download stopped mid-stream (Ctrl-C) removes its temporary file and writes no final file."""
    calls = []
    real = hashlib.sha256

    class Interrupting:
        def __init__(self, *args):
            self.h = real(*args)

        def update(self, data):
            calls.append(len(data))
            raise KeyboardInterrupt

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(hub.hashlib, "sha256", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        hub.download(f"{server}/ok/weights.pth", None, progress=False)
    assert calls and sorted(p.name for p in cache.iterdir()) == []


def test_deadline_settings(monkeypatch):
    monkeypatch.setenv("VISIONATTN_DOWNLOAD_DEADLINE", "12.5")
    assert hub.download_deadline() == 12.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("VISIONATTN_DOWNLOAD_DEADLINE", bad)
        expect_library_error(hub.download_deadline, names=["VISIONATTN_DOWNLOAD_DEADLINE", bad], types=(ValueError,))
    monkeypatch.delenv("VISIONATTN_DOWNLOAD_DEADLINE")
    assert hub.download_deadline() == 3600.0
