"""Readiness gate for one server, stdlib only: it runs on the host (ExecStartPost, verify role)
and on the controller (rollouts).

    mineru-fleet-ready [--url http://127.0.0.1:30000] [--timeout 900] [--chat] [--pid $MAINPID]

Ready means: ``/v1/models`` lists exactly one model (what ``mineru -b vlm-http-client`` expects)
and, with ``--chat``, one tiny chat completion succeeds. ``/health`` alone is not enough: it can
answer 200 before the model serves (vllm issue 15313). Without ``--url`` the port comes from the
``MINERU_VLLM_ARGS`` of the unit's environment file.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib


class ArgsError(ValueError):
    """MINERU_VLLM_ARGS cannot be read (unbalanced quotes, a --port that is no port)."""


def url_from_env(env: dict[str, str] | None = None) -> str:
    """http://127.0.0.1:PORT from the ``--port`` in MINERU_VLLM_ARGS (30000 when absent).

    The variable is written by the deploy with ``shlex.join`` (units.vllm_args), so ``shlex.split``
    gives back one value per argument; anything it cannot read is an ArgsError, never a traceback."""
    raw = (env or os.environ).get("MINERU_VLLM_ARGS", "")
    try:
        args = shlex.split(raw)
    except ValueError as e:
        raise ArgsError(f"MINERU_VLLM_ARGS cannot be split into arguments ({e}): redeploy to rewrite the env file") from None
    port = "30000"
    if "--port" in args:
        i = args.index("--port")
        port = args[i + 1] if i + 1 < len(args) else ""
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ArgsError(f"MINERU_VLLM_ARGS has --port {port[:20]!r}, not a port number: redeploy to rewrite the env file")
    return f"http://127.0.0.1:{port}"


def _get(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def check_once(base: str, chat: bool, timeout: float = 30) -> tuple[bool, str]:
    """One probe: (ready, what was seen)."""
    try:
        models = [m["id"] for m in _get(f"{base}/v1/models", timeout).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"/v1/models: {e}"
    if len(models) != 1:
        return False, f"/v1/models lists {models}: expected exactly one model"
    if chat:
        body = {"model": models[0], "messages": [{"role": "user", "content": "ping"}], "max_tokens": 2, "temperature": 0}
        try:
            out = _post(f"{base}/v1/chat/completions", body, timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            return False, f"chat completion: {e}"
        if not out.get("choices"):
            return False, f"chat completion returned no choices: {out}"
    return True, f"model {models[0]} serves" + (" and answers" if chat else "")


def page_png(width: int = 128, height: int = 96) -> bytes:
    """A small RGB PNG that looks like a page: a dark title bar and lines of 'text' on white."""
    def px(x: int, y: int) -> bytes:
        if 8 <= y < 18 and 10 <= x < 90:
            return b"\x20\x20\x20"
        if y >= 28 and (y - 28) % 10 < 4 and 10 <= x < width - 10 - (y * 7) % 30:
            return b"\x50\x50\x50"
        return b"\xff\xff\xff"

    rows = b"".join(b"\x00" + b"".join(px(x, y) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_chat_body(model: str, max_tokens: int = 8) -> dict:
    """What MinerU's VLM client sends, small: one page image and a prompt, greedy, a few tokens."""
    image = "data:image/png;base64," + base64.b64encode(page_png()).decode()
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": "Text Recognition:"}]}]}


def gate(base: str, model: str, timeout: float = 120) -> tuple[bool, str]:
    """The rollout's gate from the controller: ``/health`` 200, ``/v1/models`` lists exactly ``model`` (the stable
    served name), and one chat completion with a page image answers. (ready, what was seen)."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as r:
            if r.status != 200:
                return False, f"/health answered {r.status}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"/health: {e}"
    try:
        models = [m["id"] for m in _get(f"{base}/v1/models", timeout).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"/v1/models: {e}"
    if models != [model]:
        return False, f"/v1/models lists {models}: expected [{model!r}] (the served name must not change between revisions)"
    try:
        out = _post(f"{base}/v1/chat/completions", image_chat_body(model), timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"image chat completion: {e}"
    if not out.get("choices"):
        return False, f"image chat completion returned no choices: {str(out)[:200]}"
    return True, f"/health 200, serves {model}, an image chat completion answered"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(
    base: str, timeout: float, chat: bool, interval: float = 2.0, pid: int | None = None
) -> tuple[bool, str, float]:
    """Probe until ready or ``timeout`` seconds pass: (ready, last message, seconds waited).

    With ``pid`` (the server's main PID), give up as soon as that process is gone: a server that
    crashed while loading fails its start at once instead of after the whole timeout.
    """
    t0 = time.monotonic()
    while True:
        ok, msg = check_once(base, chat)
        waited = time.monotonic() - t0
        if ok or waited >= timeout:
            return ok, msg, waited
        if pid is not None and not _alive(pid):
            return False, f"the server process {pid} exited while loading (see its journal)", waited
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="server base URL (default: from MINERU_VLLM_ARGS)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--chat", action="store_true", help="also require one chat completion")
    ap.add_argument("--pid", type=int, default=None, help="the server's main PID: fail at once when it exits ($MAINPID)")
    a = ap.parse_args(argv)
    try:
        base = a.url or url_from_env()
    except ArgsError as e:
        print(f"NOT ready: {e}", file=sys.stderr, flush=True)
        return 2
    if not base.startswith(("http://", "https://")):
        print(f"NOT ready: --url {base[:60]!r} is not an http(s) URL, e.g. http://127.0.0.1:30000", file=sys.stderr, flush=True)
        return 2
    ok, msg, waited = wait_ready(base, a.timeout, a.chat, pid=a.pid)
    print(f"{'ready' if ok else 'NOT ready'} after {waited:.1f}s: {base}: {msg}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
