"""The sandbox load generator against a fake OpenAI-style server on loopback: counts, reasons, percentiles, refusals."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mineru_fleet.sandbox import loadgen


class _Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = 0
    bodies: list = []
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "/var/lib/mineru-fleet/models/tiny"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Fake.lock:
            _Fake.calls += 1
            n = _Fake.calls
            _Fake.bodies.append(body)
        if n % 5 == 0:
            self._send(503, {"error": "busy"})
        else:
            self._send(200, {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 30}})


@pytest.fixture
def fake():
    _Fake.calls, _Fake.bodies = 0, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_counts_every_request_and_every_failure_reason(fake):
    r = loadgen.LoadGen(fake, requests=20, time_limit=30, concurrency=3).start().wait(timeout=30)
    assert (r.sent, r.ok, r.failed) == (20, 16, 4)
    assert r.failures == {"HTTP 503": 4}
    assert len(r.latencies) == 16 and r.as_dict()["latency_s"]["p50"] is not None
    body = _Fake.bodies[0]
    assert body["model"] == "/var/lib/mineru-fleet/models/tiny"
    image = body["messages"][0]["content"][0]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,iVBORw0KGgo")  # a real PNG


def test_stop_ends_a_long_run_and_a_dead_server_is_a_failure_with_its_reason(fake):
    gen = loadgen.LoadGen(fake, requests=10**6, time_limit=600, concurrency=2).start()
    r = gen.stop(timeout=30)
    assert not gen.running and r.sent == r.ok + r.failed
    dead = loadgen.LoadGen("http://127.0.0.1:9", requests=3, time_limit=10, concurrency=1, model="m").start().wait(timeout=30)
    assert dead.failed == 3 and dead.ok == 0 and "ConnectionRefusedError" in next(iter(dead.failures))


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "https://127.0.0.1:8000", "http://example.com:8000", "ftp://127.0.0.1"])
def test_refuses_what_is_not_the_sandbox(url):
    with pytest.raises(loadgen.LoadGenError):
        loadgen.LoadGen(url)


def test_sandbox_addresses_are_accepted(monkeypatch):
    monkeypatch.setenv("MINERU_FLEET_SANDBOX_NET", "192.168.254")
    assert loadgen.sandbox_url("http://192.168.254.250:8000") == ("192.168.254.250", 8000)
    with pytest.raises(loadgen.LoadGenError):
        loadgen.sandbox_url("http://192.168.253.250:8000")


def test_percentiles_and_the_text():
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0
    r = loadgen.Result("http://127.0.0.1:1", sent=2, ok=1, failed=1, latencies=[0.5])
    r.failures["HTTP 502"] += 1
    assert "sent 2, ok 1, failed 1" in r.text() and "1x HTTP 502" in r.text()
