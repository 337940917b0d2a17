"""Load on a sandbox server or balancer: real chat completions with a page image, counted.

    uv run python -m mineru_fleet.sandbox.loadgen --url http://192.168.250.250:8000 --requests 200 --time-limit 120 --concurrency 4

Each request is what MinerU's VLM client sends, small: an OpenAI-style ``/v1/chat/completions``
with a page image (a PNG drawn here) and a short prompt, to the model ``/v1/models`` lists. Workers
(threads, one HTTP/1.1 keep-alive connection each, as a real client keeps) send until the request
count or the time limit is reached, or ``stop()``; every answer is counted: ``ok`` (HTTP 200 with
a completion), else ``failed`` with its reason (``HTTP 503``, ``ConnectionResetError: ...``).

A test starts it, does something to the fleet, and collects it::

    gen = LoadGen("http://192.168.250.250:8000", requests=10_000, time_limit=600, concurrency=2).start()
    ...                                  # reload the balancer, drain a server, restart it
    result = gen.stop()                  # no new request; the ones in flight finish
    assert result.sent > 0 and result.failed == 0, result.text()

Sandbox only: a URL whose host is not loopback or an address of the sandbox instance's /24 is
refused (this is a load generator; it never points at a real fleet by mistake).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

from mineru_fleet.onhost.ready import image_chat_body, page_png  # noqa: F401  (page_png: re-exported)
from mineru_fleet.sandbox.config import default_config


class LoadGenError(ValueError):
    """A URL the load generator refuses, or a server it cannot start on."""


def sandbox_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``url`` when it is http:// to loopback or the sandbox instance's /24; else LoadGenError."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise LoadGenError(f"{url!r}: give http://IP:PORT of a sandbox host or loopback")
    try:
        ip = ipaddress.ip_address(u.hostname)
    except ValueError:
        raise LoadGenError(f"{url!r}: the host must be an IP address of the sandbox (no names: nothing outside it is loaded)") from None
    net = ipaddress.ip_network(f"{default_config().net_prefix}.0/24")
    if not (ip.is_loopback or ip in net):
        raise LoadGenError(f"{url!r}: {ip} is neither loopback nor a sandbox address ({net}): the load generator is sandbox-only")
    return u.hostname, u.port or 80


def served_model(url: str, timeout: float = 30) -> str:
    """The one model ``URL/v1/models`` lists."""
    host, port = sandbox_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        body = r.read()
    except OSError as e:
        raise LoadGenError(f"{url}/v1/models: {type(e).__name__}: {e}") from None
    finally:
        conn.close()
    if r.status != 200:
        raise LoadGenError(f"{url}/v1/models: HTTP {r.status}")
    ids = [m["id"] for m in json.loads(body)["data"]]
    if len(ids) != 1:
        raise LoadGenError(f"{url}/v1/models lists {ids}: one model expected")
    return ids[0]


def chat_body(model: str, max_tokens: int = 8) -> bytes:
    """The request: one page image and a prompt, greedy, a few tokens (the tiny model's answer is noise); the same
    request the rollout's gate sends (``onhost/ready.image_chat_body``)."""
    return json.dumps(image_chat_body(model, max_tokens)).encode()


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99), percentile([], 50)
    (2.0, 4.0, None)
    """
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


@dataclass
class Result:
    """What a run sent and got back (latencies of the ok requests, seconds)."""

    url: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failures: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "url": self.url, "sent": self.sent, "ok": self.ok, "failed": self.failed,
            "failures": dict(self.failures.most_common()), "duration_s": round(self.duration_s, 2),
            "latency_s": {f"p{p}": (None if (v := percentile(self.latencies, p)) is None else round(v, 3)) for p in (50, 90, 99)},
        }

    def text(self) -> str:
        d = self.as_dict()
        lat = " ".join(f"{k}={v}" for k, v in d["latency_s"].items())
        why = "; ".join(f"{n}x {reason}" for reason, n in self.failures.most_common()) or "-"
        return (f"{self.url}: sent {self.sent}, ok {self.ok}, failed {self.failed} in {self.duration_s:.1f}s;"
                f" latency {lat}; failures: {why}")


class LoadGen:
    """Background load: ``start()``, then ``stop()`` (or ``wait()``) for the ``Result``."""

    def __init__(self, url: str, requests: int = 100, time_limit: float = 60, concurrency: int = 2,
                 max_tokens: int = 8, timeout: float = 600, model: str | None = None):
        self.host, self.port = sandbox_url(url)
        if requests < 1 or concurrency < 1 or time_limit <= 0:
            raise LoadGenError("requests and concurrency must be 1 or more, the time limit above 0")
        self.url = url.rstrip("/")
        self.requests, self.time_limit, self.concurrency, self.timeout = requests, time_limit, concurrency, timeout
        self.model = model
        self.max_tokens = max_tokens
        self.result = Result(self.url)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._body = b""

    def start(self) -> LoadGen:
        self.model = self.model or served_model(self.url)
        self._body = chat_body(self.model, self.max_tokens)
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"loadgen-{i}", daemon=True) for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def _take(self) -> bool:
        """Reserve the next request (False: the count, the time limit or stop() says no more)."""
        with self._lock:
            if self._stop.is_set() or self.result.sent >= self.requests or time.monotonic() - self._t0 >= self.time_limit:
                return False
            self.result.sent += 1
            return True

    def _record(self, latency: float | None, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.result.ok += 1
                self.result.latencies.append(latency or 0.0)
            else:
                self.result.failed += 1
                self.result.failures[failure[:200]] += 1

    def _worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/json"}
        while self._take():
            t = time.monotonic()
            failure = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn.request("POST", "/v1/chat/completions", body=self._body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    failure = f"HTTP {r.status}"
                elif not json.loads(data).get("choices"):
                    failure = "HTTP 200 without choices"
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 -- every failure is counted with its reason
                failure = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            self._record(time.monotonic() - t, failure)
        if conn is not None:
            conn.close()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def snapshot(self) -> Result:
        """A copy of the counts so far (the run goes on)."""
        with self._lock:
            r = self.result
            return Result(r.url, r.sent, r.ok, r.failed, Counter(r.failures), list(r.latencies), time.monotonic() - self._t0)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait until the count or the time limit ends the run (and the requests in flight come back)."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        self.result.duration_s = time.monotonic() - self._t0
        return self.result

    def stop(self, timeout: float | None = None) -> Result:
        """No new request; wait for the ones in flight; the result."""
        self._stop.set()
        return self.wait(timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mineru_fleet.sandbox.loadgen", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://IP:PORT of a sandbox server or balancer")
    ap.add_argument("--requests", type=int, default=100, help="requests to send at most (default 100)")
    ap.add_argument("--time-limit", type=float, default=60, help="seconds to send for at most (default 60)")
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight at once (default 2)")
    ap.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each completion (default 8)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    try:
        gen = LoadGen(a.url, a.requests, a.time_limit, a.concurrency, a.max_tokens).start()
    except LoadGenError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    try:
        result = gen.wait()
    except KeyboardInterrupt:
        result = gen.stop()
    print(json.dumps(result.as_dict(), indent=1) if a.json else result.text())
    return 0 if result.failed == 0 and result.ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
