"""Fleet rollouts, the pure part (issue 11): batches, the per-server phase machine, the state file, --resume.

Data in, data out: no pyinfra, no processes, no sockets, no clock. Timestamps are numbers the
controller passes in (``at=``); the state is turned into JSON text here and written by the controller.

The words, for people who know Ansible's rolling updates:

- ``--batch 1,25%,50%`` reads like ``serial: [1, "25%", "50%"]``: the last value repeats until the
  fleet is covered, a percentage is of the *whole* fleet, rounded down, at least one server.
- ``--canary N`` is one more batch of N servers in front (``serial: [N, 1, "25%", "50%"]``).
- ``--max-fail N|P%`` reads like ``max_fail_percentage``: a batch fails when its failures *exceed*
  N servers or P% of the batch (equal is still fine). A batch where every server failed always
  stops the rollout, as in Ansible.

Example::

    >>> batches = plan_batches([("mf2", 0), ("mf1", 1), ("mf1", 0)], canary=1, batch=parse_batch("1"))
    >>> print(format_plan(batches))
    canary   mf1:0
    batch 1  mf1:1
    batch 2  mf2:0
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

SCHEMA = 1
KIND = "mineru-fleet-rollout"


# --------------------------------------------------------------------------------------------
# Servers and flags


@dataclass(frozen=True)
class Server:
    """One vLLM server of the fleet: a host of the inventory and the instance N of ``mineru-vllm@N``.

    >>> Server.parse("mf1:0")
    Server(host='mf1', instance=0)
    >>> str(Server("mf1", 2))
    'mf1:2'
    """

    host: str
    instance: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or re.search(r"[\s:]", self.host):
            raise ValueError(f"server host {self.host!r}: give the inventory host name (no ':' or spaces)")
        if isinstance(self.instance, bool) or not isinstance(self.instance, int) or self.instance < 0:
            raise ValueError(f"server {self.host}: instance {self.instance!r} is not N of mineru-vllm@N (0, 1, ...)")

    def __str__(self) -> str:
        return f"{self.host}:{self.instance}"

    @classmethod
    def parse(cls, text: str) -> Server:
        """``HOST`` or ``HOST:N`` (the form of ``mineru-fleet drain HOST[:N]``); a bare host is instance 0.

        >>> Server.parse("gpu-a")
        Server(host='gpu-a', instance=0)
        """
        host, sep, inst = text.strip().rpartition(":")
        if not sep:
            return cls(text.strip(), 0)
        if not inst.isdigit():
            raise ValueError(f"server {text!r}: write HOST or HOST:N with N the instance of mineru-vllm@N")
        return cls(host, int(inst))


def sort_key(server: Server) -> tuple:
    """The stable order of a fleet: host names with their numbers compared as numbers, then the instance.

    >>> [str(s) for s in sorted([Server("mf10"), Server("mf2", 1), Server("mf2", 0)], key=sort_key)]
    ['mf2:0', 'mf2:1', 'mf10:0']
    """
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", server.host) if p)
    return parts, server.host, server.instance


def as_servers(fleet: Iterable[Server | tuple[str, int] | str]) -> tuple[Server, ...]:
    """The fleet as ``Server`` objects in the stable order; duplicates are an error.

    >>> as_servers([("mf2", 0), "mf1:1", Server("mf1", 0)])
    (Server(host='mf1', instance=0), Server(host='mf1', instance=1), Server(host='mf2', instance=0))
    """
    out: list[Server] = []
    for item in fleet:
        if isinstance(item, Server):
            out.append(item)
        elif isinstance(item, str):
            out.append(Server.parse(item))
        else:
            host, instance = item
            out.append(Server(host, instance))
    seen: set[Server] = set()
    dupes = sorted({str(s) for s in out if s in seen or seen.add(s)})
    if dupes:
        raise ValueError(f"the fleet lists {', '.join(dupes)} more than once: each server must appear once")
    return tuple(sorted(out, key=sort_key))


class FlagError(ValueError):
    """A rollout flag that cannot be read; the message names the flag, what is wrong and the fix.

    >>> str(FlagError("--batch", "0", "0 servers is not a batch", "give 1 or more, e.g. --batch 1"))
    "--batch '0': 0 servers is not a batch; give 1 or more, e.g. --batch 1"
    """

    def __init__(self, flag: str, value: object, problem: str, fix: str):
        self.flag, self.value, self.problem, self.fix = flag, value, problem, fix
        super().__init__(f"{flag} {value!r}: {problem}; {fix}")


@dataclass(frozen=True)
class Size:
    """One value of ``--batch``: a number of servers, or a percentage of the whole fleet.

    >>> Size(25, percent=True).resolve(10), Size(3).resolve(10), Size(5, percent=True).resolve(10)
    (2, 3, 1)
    """

    value: int
    percent: bool = False

    def resolve(self, fleet_size: int) -> int:
        """Servers in a batch of this size: a percentage of the whole fleet rounded down, at least 1.

        Integer arithmetic: Ansible computes ``int(pct / 100.0 * n)`` in floating point, which gives
        one less for a few values (29% of 100 is 28 there, 29 here).

        >>> Size(29, percent=True).resolve(100)
        29
        """
        if not self.percent:
            return self.value
        return max(1, self.value * fleet_size // 100)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


_BATCH_FIX = "give servers per batch as numbers or percentages of the fleet from 1% to 100%, e.g. --batch 1,25%,50%"


def _parse_size(flag: str, text: str, item: str, fix: str) -> Size:
    raw = item.strip()
    if not raw:
        raise FlagError(flag, text, "an empty value", fix)
    pct = raw.endswith("%")
    digits = raw[:-1].strip() if pct else raw
    if not re.fullmatch(r"[+-]?\d+", digits):
        raise FlagError(flag, text, f"{raw!r} is neither a whole number nor a percentage", fix)
    n = int(digits)
    if n < 0:
        raise FlagError(flag, text, f"{raw} is negative", fix)
    if n == 0:
        raise FlagError(flag, text, f"{raw} would be a batch of no server", fix + " (100% for the whole fleet at once)")
    if pct and n > 100:
        raise FlagError(flag, text, f"{raw} is more than the whole fleet", fix)
    return Size(n, pct)


def parse_batch(text: str) -> tuple[Size, ...]:
    """Read ``--batch``: comma-separated numbers and percentages, the last one repeating.

    >>> [str(s) for s in parse_batch("1, 25%,50%")]
    ['1', '25%', '50%']
    >>> parse_batch("0")
    Traceback (most recent call last):
    ...
    mineru_fleet.core.rollout.FlagError: --batch '0': 0 would be a batch of no server; give servers per batch ...
    """
    if not isinstance(text, str) or not text.strip():
        raise FlagError("--batch", text, "no batch size given", _BATCH_FIX)
    return tuple(_parse_size("--batch", text, item, _BATCH_FIX) for item in text.split(","))


def parse_canary(text: str | int) -> int:
    """Read ``--canary``: how many servers go first, in a batch of their own (0: no canary).

    >>> parse_canary("1"), parse_canary(0)
    (1, 0)
    """
    fix = "give a whole number of servers, e.g. --canary 1 (0 for no canary)"
    raw = str(text).strip()
    if not raw:
        raise FlagError("--canary", text, "no number given", fix)
    if not re.fullmatch(r"[+-]?\d+", raw):
        raise FlagError("--canary", text, "not a whole number" + (" (a canary is a count, not a percentage)" if raw.endswith("%") else ""), fix)
    if int(raw) < 0:
        raise FlagError("--canary", text, "negative", fix)
    return int(raw)


@dataclass(frozen=True)
class MaxFail:
    """``--max-fail``: failures a batch tolerates, as a count or a percentage of the batch.

    The batch fails when its failures *exceed* the limit (Ansible's ``max_fail_percentage``).

    >>> MaxFail(0).exceeded(1, 4), MaxFail(49, percent=True).exceeded(2, 4), MaxFail(50, percent=True).exceeded(2, 4)
    (True, True, False)
    """

    value: int
    percent: bool = False

    def exceeded(self, failures: int, batch_size: int) -> bool:
        """True when ``failures`` in a batch of ``batch_size`` servers is more than this limit."""
        if self.percent:
            return failures * 100 > self.value * batch_size
        return failures > self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_max_fail(text: str | int) -> MaxFail:
    """Read ``--max-fail``: ``N`` servers or ``P%`` of each batch may fail (0: any failure stops).

    >>> parse_max_fail("25%"), parse_max_fail("0")
    (MaxFail(value=25, percent=True), MaxFail(value=0, percent=False))
    """
    fix = "give failures a batch tolerates as a number or a percentage of the batch from 0% to 100%, e.g. --max-fail 0 or --max-fail 25%"
    raw = str(text).strip()
    if not raw:
        raise FlagError("--max-fail", text, "no limit given", fix)
    pct = raw.endswith("%")
    digits = raw[:-1].strip() if pct else raw
    if not re.fullmatch(r"[+-]?\d+", digits):
        raise FlagError("--max-fail", text, "neither a whole number nor a percentage", fix)
    n = int(digits)
    if n < 0:
        raise FlagError("--max-fail", text, "negative", fix)
    if pct and n > 100:
        raise FlagError("--max-fail", text, "more than 100% of a batch", fix)
    return MaxFail(n, pct)


# --------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class Batch:
    """Servers handled together: ``index`` counts from 0 (the canary, when there is one), ``label``
    is what people read (``canary``, ``batch 1``, ``batch 2``, ...).

    >>> plan_batches(["a:0", "b:0"], canary=1)[1].label
    'batch 1'
    """

    index: int
    label: str
    servers: tuple[Server, ...]

    @property
    def canary(self) -> bool:
        return self.label == "canary"


def ansible_batches(fleet: Sequence[Server], serial: Sequence[Size]) -> list[tuple[Server, ...]]:
    """Ansible's ``serial`` split of an ordered fleet: each value in turn, the last repeating.

    >>> [len(b) for b in ansible_batches([Server(f"h{i}") for i in range(10)], parse_batch("1,5,20%"))]
    [1, 5, 2, 2]
    """
    if not serial:
        raise ValueError("serial needs at least one batch size")
    left, total, out, i = list(fleet), len(fleet), [], 0
    while left:
        n = serial[i].resolve(total)
        out.append(tuple(left[:n]))
        del left[:n]
        i = min(i + 1, len(serial) - 1)
    return out


def plan_batches(fleet: Iterable[Server | tuple[str, int] | str], canary: int = 0, batch: Sequence[Size] = (Size(1),)) -> tuple[Batch, ...]:
    """Order the fleet (host, then instance) and cut it into batches: the canary first, then ``batch``.

    Percentages are of the whole fleet, canary included (as if ``serial: [canary, *batch]``). A
    canary larger than the fleet takes the whole fleet, like any size larger than what is left.

    >>> [[str(s) for s in b.servers] for b in plan_batches(["a:0", "a:1", "b:0", "b:1"], canary=1, batch=parse_batch("50%"))]
    [['a:0'], ['a:1', 'b:0'], ['b:1']]
    """
    servers = as_servers(fleet)
    if isinstance(canary, bool) or not isinstance(canary, int) or canary < 0:
        raise FlagError("--canary", canary, "not a count of servers", "give a whole number, e.g. --canary 1")
    serial = ([Size(canary)] if canary else []) + list(batch)
    cut = ansible_batches(servers, serial) if servers else []
    first = 0 if canary else 1
    return tuple(Batch(i, "canary" if canary and i == 0 else f"batch {i + first}", b) for i, b in enumerate(cut))


def format_plan(batches: Sequence[Batch]) -> str:
    """The order ``--dry-run`` prints: one line per batch, its label and its servers.

    >>> print(format_plan(plan_batches(["b:0", "a:0"], batch=parse_batch("100%"))))
    batch 1  a:0 b:0
    """
    width = max((len(b.label) for b in batches), default=0)
    return "\n".join(f"{b.label:<{width}}  {' '.join(str(s) for s in b.servers)}" for b in batches)


# --------------------------------------------------------------------------------------------
# The phase machine


class Phase(StrEnum):
    """Where one server is in a rollout. The controller records a phase *before* doing its step."""

    PENDING = "pending"  # not reached yet
    DRAINING = "draining"  # balancer told DRAIN; waiting for no request at balancer and vLLM
    DRAINED = "drained"  # idle at the balancer (scur = qcur = 0) and in vLLM's gauges
    MAINT = "maint"  # balancer told MAINT (health checks off)
    DEPLOYING = "deploying"  # pyinfra converging the host to the target
    GATING = "gating"  # /health, /v1/models, one real completion, from the controller
    ENABLING = "enabling"  # balancer told READY; waiting until it sees the server UP
    UP = "up"  # the balancer sees it UP
    SOAKING = "soaking"  # serving, watched for the soak time
    DONE = "done"
    FAILED = "failed"  # a step failed (``failed_at`` says which); counts against --max-fail
    ROLLING_BACK = "rolling_back"  # going back to its previous deployment
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    SKIPPED = "skipped"  # never reached: the rollout stopped before its batch


#: the forward path of a server, in order
FORWARD = (
    Phase.PENDING, Phase.DRAINING, Phase.DRAINED, Phase.MAINT, Phase.DEPLOYING, Phase.GATING,
    Phase.ENABLING, Phase.UP, Phase.SOAKING, Phase.DONE,
)
#: phases in which a step can fail
ACTIVE = frozenset(FORWARD[1:-1])
#: every legal move; anything else is refused by ``transition``
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    **{a: frozenset({b, Phase.FAILED}) for a, b in zip(FORWARD[1:-1], FORWARD[2:])},
    Phase.PENDING: frozenset({Phase.DRAINING, Phase.SKIPPED}),
    Phase.DONE: frozenset({Phase.ROLLING_BACK}),  # --rollback of a finished server
    Phase.FAILED: frozenset({Phase.ROLLING_BACK}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED}),
    Phase.ROLLBACK_FAILED: frozenset({Phase.ROLLING_BACK}),  # another --rollback tries again
    Phase.ROLLED_BACK: frozenset(),
    Phase.SKIPPED: frozenset(),
}
#: phases in which a server takes no new request from the balancer (DRAIN included: it takes
#: no new request, so it is capacity out, and so are failed servers until rolled back)
OUT_OF_BALANCER = frozenset({
    Phase.DRAINING, Phase.DRAINED, Phase.MAINT, Phase.DEPLOYING, Phase.GATING, Phase.ENABLING,
    Phase.FAILED, Phase.ROLLING_BACK, Phase.ROLLBACK_FAILED,
})
#: phases that count as a failure of the server's batch
FAILURES = frozenset({Phase.FAILED, Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED})
#: phases in which a server's part of the batch is over
SETTLED = FAILURES | {Phase.DONE}
#: where a failed server's host was not changed yet: putting it back in the balancer is enough
HOST_UNTOUCHED = frozenset({Phase.DRAINING, Phase.DRAINED, Phase.MAINT})


class RolloutError(ValueError):
    """A step the rollout rules refuse (illegal move, too many servers out); the message says which."""


def can_transition(current: Phase | str, to: Phase | str) -> bool:
    """Whether a server may go from ``current`` to ``to``.

    >>> can_transition("pending", "draining"), can_transition("pending", "deploying")
    (True, False)
    """
    return Phase(to) in TRANSITIONS[Phase(current)]


@dataclass(frozen=True)
class Deployment:
    """What a server runs, as recorded on its host after each successful deploy.

    >>> Deployment("r-1a2b", "abc123", "sha256:e1", "sha256:u1").release
    'r-1a2b'
    """

    release: str  # runtime release folder id
    model_revision: str
    env_digest: str  # digest of /etc/mineru-fleet/mineru-vllm@N.env
    unit_digest: str  # digest of the mineru-vllm@.service unit
    record: str = ""  # the host's deployment record id (<state_dir>/deployments/<id>/): what a rollback restores

    def to_dict(self) -> dict[str, str]:
        return {"release": self.release, "model_revision": self.model_revision, "env_digest": self.env_digest,
                "unit_digest": self.unit_digest, "record": self.record}


@dataclass(frozen=True)
class ServerState:
    """One server in a rollout: its batch, its phase, what it ran before and what it should run after.

    >>> s = ServerState(Server("mf1"), batch=0)
    >>> s.phase, s.touched
    (<Phase.PENDING: 'pending'>, False)
    """

    server: Server
    batch: int
    phase: Phase = Phase.PENDING
    previous: Deployment | None = None  # what to roll back to (None: nothing was recorded)
    expected: Deployment | None = None  # what the target deploys on it, when the controller knows
    failed_at: Phase | None = None  # the phase whose step failed
    error: str | None = None
    history: tuple[tuple[Phase, float], ...] = ()  # (phase entered, at)

    @property
    def touched(self) -> bool:
        """Whether the rollout did anything to this server (its balancer entry or its host)."""
        return self.phase not in (Phase.PENDING, Phase.SKIPPED)


def transition(s: ServerState, to: Phase | str, at: float, error: str | None = None) -> ServerState:
    """Move one server to phase ``to`` at time ``at``; an illegal move raises ``RolloutError``.

    Going to ``failed`` records the phase that failed and needs ``error`` (the cause, for the operator).

    >>> transition(ServerState(Server("mf1"), 0), "draining", at=10.0).history
    ((<Phase.DRAINING: 'draining'>, 10.0),)
    >>> transition(ServerState(Server("mf1"), 0), "up", at=10.0)
    Traceback (most recent call last):
    ...
    mineru_fleet.core.rollout.RolloutError: mf1:0: pending -> up is not a legal move (from pending: draining, skipped)
    """
    to = Phase(to)
    if not can_transition(s.phase, to):
        legal = ", ".join(sorted(TRANSITIONS[s.phase])) or "none, it is final"
        raise RolloutError(f"{s.server}: {s.phase} -> {to} is not a legal move (from {s.phase}: {legal})")
    if to is Phase.FAILED and not error:
        raise RolloutError(f"{s.server}: a failure needs its cause (error=...)")
    return replace(
        s,
        phase=to,
        failed_at=s.phase if to is Phase.FAILED else s.failed_at,
        error=error if error is not None else s.error,
        history=(*s.history, (to, float(at))),
    )


def phase_durations(s: ServerState, until: float | None = None) -> dict[Phase, float]:
    """Seconds spent in each phase, from the history (the last one until ``until``, when given).

    >>> s = ServerState(Server("a"), 0, history=((Phase.DRAINING, 0.0), (Phase.DRAINED, 1.5), (Phase.MAINT, 2.0)))
    >>> phase_durations(s)
    {<Phase.DRAINING: 'draining'>: 1.5, <Phase.DRAINED: 'drained'>: 0.5}
    """
    out: dict[Phase, float] = {}
    ends = [t for _, t in s.history[1:]] + ([until] if until is not None else [])
    for (phase, start), end in zip(s.history, ends):
        out[phase] = out.get(phase, 0.0) + (end - start)
    return out


def is_idle(scur: int, qcur: int, running: float, waiting: float) -> bool:
    """The ``drained`` rule: no session and no queue at the balancer, nothing running or waiting in vLLM.

    >>> is_idle(0, 0, 0.0, 0.0), is_idle(0, 0, 1.0, 0.0)
    (True, False)
    """
    return scur == 0 and qcur == 0 and running == 0 and waiting == 0


# --------------------------------------------------------------------------------------------
# The rollout state


@dataclass(frozen=True)
class Options:
    """The flags a rollout runs with, kept in its state so that ``--resume`` runs the same way.

    >>> Options(canary=1, batch="1,25%", max_fail="0").max_fail_limit
    MaxFail(value=0, percent=False)
    """

    canary: int = 1
    batch: str = "1"
    max_fail: str = "0"

    def __post_init__(self) -> None:
        parse_canary(self.canary), parse_batch(self.batch), parse_max_fail(self.max_fail)

    @property
    def sizes(self) -> tuple[Size, ...]:
        return parse_batch(self.batch)

    @property
    def max_fail_limit(self) -> MaxFail:
        return parse_max_fail(self.max_fail)


@dataclass(frozen=True)
class RolloutState:
    """A rollout: its id, its target (what is rolled out), the flags, each server's state.

    ``servers`` are in rollout order (batch by batch, each batch in the stable order).

    >>> st = new_rollout("r1", {"model_revision": "v2"}, ["mf1:0", "mf2:0"], Options(canary=1), at=0.0)
    >>> [(str(s.server), s.batch, str(s.phase)) for s in st.servers]
    [('mf1:0', 0, 'pending'), ('mf2:0', 1, 'pending')]
    """

    id: str
    target: Mapping[str, Any]
    options: Options
    servers: tuple[ServerState, ...]
    created: float
    updated: float
    stop_reason: str | None = None

    def get(self, server: Server | str) -> ServerState:
        """The state of one server (``Server`` or ``"host:N"``); KeyError if it is not in this rollout."""
        key = Server.parse(server) if isinstance(server, str) else server
        for s in self.servers:
            if s.server == key:
                return s
        raise KeyError(f"{key} is not part of rollout {self.id}")

    def batch(self, index: int) -> tuple[ServerState, ...]:
        """The servers of batch ``index``, in order."""
        return tuple(s for s in self.servers if s.batch == index)

    @property
    def batch_count(self) -> int:
        return 1 + max((s.batch for s in self.servers), default=-1)


def new_rollout(
    rollout_id: str,
    target: Mapping[str, Any],
    fleet: Iterable[Server | tuple[str, int] | str],
    options: Options,
    at: float,
    previous: Mapping[Server, Deployment | None] | None = None,
    expected: Mapping[Server, Deployment | None] | None = None,
) -> RolloutState:
    """A rollout with every server pending, in its batch; ``previous``/``expected`` per server when known.

    >>> st = new_rollout("r1", {}, [("b", 0), ("a", 0), ("a", 1)], Options(canary=0, batch="2"), at=5.0)
    >>> [(str(s.server), s.batch) for s in st.servers]
    [('a:0', 0), ('a:1', 0), ('b:0', 1)]
    """
    if not rollout_id or not isinstance(rollout_id, str):
        raise ValueError("a rollout needs an id")
    previous, expected = previous or {}, expected or {}
    batches = plan_batches(fleet, options.canary, options.sizes)
    servers = tuple(
        ServerState(srv, b.index, previous=previous.get(srv), expected=expected.get(srv)) for b in batches for srv in b.servers
    )
    return RolloutState(rollout_id, dict(target), options, servers, float(at), float(at))


def _replace_server(state: RolloutState, new: ServerState, at: float) -> RolloutState:
    return replace(state, servers=tuple(new if s.server == new.server else s for s in state.servers), updated=float(at))


def out_of_balancer(state: RolloutState) -> tuple[Server, ...]:
    """Servers that take no new request from the balancer right now (``OUT_OF_BALANCER`` phases).

    >>> st = new_rollout("r", {}, ["a:0", "b:0"], Options(canary=0), at=0)
    >>> out_of_balancer(step(st, "a:0", "draining", at=1))
    (Server(host='a', instance=0),)
    """
    return tuple(s.server for s in state.servers if s.phase in OUT_OF_BALANCER)


def step(state: RolloutState, server: Server | str, to: Phase | str, at: float, error: str | None = None) -> RolloutState:
    """Move one server of the rollout to ``to`` (``transition``), keeping the out-of-balancer bound.

    A server may leave the balancer only while fewer servers than the size of its batch are out:
    never more servers out than the batch (failed ones count until they are rolled back).

    >>> st = new_rollout("r", {}, ["a:0", "b:0"], Options(canary=0, batch="1"), at=0)
    >>> st = step(st, "a:0", "draining", at=1)
    >>> step(st, "b:0", "draining", at=2)
    Traceback (most recent call last):
    ...
    mineru_fleet.core.rollout.RolloutError: b:0: cannot go draining: a:0 already out of the balancer, batch 1 allows 1 at a time
    """
    s = state.get(server)
    new = transition(s, to, at, error)
    if new.phase in OUT_OF_BALANCER and s.phase not in OUT_OF_BALANCER:
        out = out_of_balancer(state)
        limit = len(state.batch(s.batch))
        if len(out) + 1 > limit:
            raise RolloutError(
                f"{s.server}: cannot go {new.phase}: {', '.join(map(str, out))} already out of the balancer, "
                f"batch {s.batch} allows {limit} at a time"
            )
    return _replace_server(state, new, at)


def next_batch(state: RolloutState) -> int | None:
    """The first batch with a pending server (None when there is none or the rollout was stopped).

    >>> st = new_rollout("r", {}, ["a:0", "b:0"], Options(canary=1), at=0)
    >>> next_batch(st)
    0
    """
    if state.stop_reason is not None:
        return None
    return next((s.batch for s in state.servers if s.phase is Phase.PENDING), None)


def stop(state: RolloutState, reason: str, at: float) -> RolloutState:
    """Stop the rollout: every server still pending becomes ``skipped`` and the reason is kept.

    >>> st = stop(new_rollout("r", {}, ["a:0", "b:0"], Options(canary=1), at=0), "canary failed", at=3)
    >>> [str(s.phase) for s in st.servers], st.stop_reason
    (['skipped', 'skipped'], 'canary failed')
    """
    if not reason:
        raise ValueError("a stopped rollout needs its reason")
    out = state
    for s in state.servers:
        if s.phase is Phase.PENDING:
            out = _replace_server(out, transition(s, Phase.SKIPPED, at), at)
    return replace(out, stop_reason=reason, updated=float(at))


@dataclass(frozen=True)
class Verdict:
    """What happens after a batch: go on or stop, which servers failed and which to roll back (in order)."""

    proceed: bool
    failed: tuple[Server, ...]
    rollback: tuple[Server, ...]
    reason: str


def judge_batch(state: RolloutState, index: int, max_fail: MaxFail | None = None) -> Verdict:
    """Decide, once every server of batch ``index`` is settled, whether the rollout goes on.

    It stops when the failures exceed ``max_fail`` (default: the rollout's ``--max-fail``), when
    every server of the batch failed, or when a rollback in it failed (so the controller asks
    again after rolling back the failed servers of a batch that goes on). Going on, the failed servers are rolled back (so that they
    are back in the balancer before the next batch leaves it); stopping, every touched server of
    the batch is rolled back, the failed ones first.

    >>> st = new_rollout("r", {}, ["a:0"], Options(canary=0), at=0)
    >>> for p in ("draining", "drained", "maint", "deploying"):
    ...     st = step(st, "a:0", p, at=1)
    >>> v = judge_batch(step(st, "a:0", "failed", at=2, error="vLLM exited"), 0)
    >>> v.proceed, [str(s) for s in v.rollback]
    (False, ['a:0'])
    """
    members = state.batch(index)
    if not members:
        raise RolloutError(f"rollout {state.id} has no batch {index}")
    unsettled = [str(s.server) for s in members if s.phase not in SETTLED]
    if unsettled:
        raise RolloutError(f"batch {index} is not over: {', '.join(unsettled)} still in progress")
    limit = max_fail if max_fail is not None else state.options.max_fail_limit
    failed = tuple(s.server for s in members if s.phase in FAILURES)
    needs_rollback = [s for s in members if s.phase in (Phase.FAILED, Phase.ROLLBACK_FAILED, Phase.ROLLING_BACK)]
    stuck = [str(s.server) for s in members if s.phase is Phase.ROLLBACK_FAILED]
    if stuck:
        proceed, why = False, f"the rollback of {', '.join(stuck)} failed: out of the balancer until fixed by hand"
    elif len(failed) == len(members):
        proceed, why = False, f"every server of batch {index} failed"
    elif limit.exceeded(len(failed), len(members)):
        proceed, why = False, f"{len(failed)} of {len(members)} failed in batch {index}, more than --max-fail {limit}"
    else:
        proceed = True
        why = f"{len(failed)} of {len(members)} failed in batch {index}, within --max-fail {limit}" if failed else f"batch {index} done"
    if not proceed:
        needs_rollback += [s for s in members if s.phase is Phase.DONE]
    return Verdict(proceed, failed, tuple(s.server for s in needs_rollback), why)


# --------------------------------------------------------------------------------------------
# The state file


class StateError(ValueError):
    """A rollout state file that cannot be used; the message names the file, the place and the fix."""


def _deployment_json(d: Deployment | None) -> dict | None:
    return None if d is None else d.to_dict()


def to_json(state: RolloutState) -> str:
    """The state as JSON text (the controller writes it atomically after every step).

    >>> text = to_json(new_rollout("r1", {"release": "r-2"}, ["a:0"], Options(), at=1.0))
    >>> from_json(text).target
    {'release': 'r-2'}
    """
    doc = {
        "kind": KIND,
        "schema": SCHEMA,
        "id": state.id,
        "target": dict(state.target),
        "options": {"canary": state.options.canary, "batch": state.options.batch, "max_fail": state.options.max_fail},
        "created": state.created,
        "updated": state.updated,
        "stop_reason": state.stop_reason,
        "servers": [
            {
                "host": s.server.host,
                "instance": s.server.instance,
                "batch": s.batch,
                "phase": str(s.phase),
                "failed_at": None if s.failed_at is None else str(s.failed_at),
                "error": s.error,
                "previous": _deployment_json(s.previous),
                "expected": _deployment_json(s.expected),
                "history": [[str(p), t] for p, t in s.history],
            }
            for s in state.servers
        ],
    }
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


class _Reader:
    """Typed access to a parsed document, every error naming its place (``servers[2].phase``)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> StateError:
        return StateError(
            f"{self.source}: {where}: {problem}. The file was cut short or edited by hand: restore it, or "
            "check the fleet with `mineru-fleet status` and start a new rollout"
        )

    def get(self, obj: Mapping, key: str, types: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
        place = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(place, "missing")
        value = obj[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(place, f"expected {_type_names(types)}, found {value!r}")
        if not isinstance(value, types):
            raise self.fail(place, f"expected {_type_names(types)}, found {type(value).__name__} {value!r}"[:200])
        return value

    def number(self, obj: Mapping, key: str, where: str) -> float:
        return float(self.get(obj, key, (int, float), where))

    def phase(self, value: Any, place: str) -> Phase:
        try:
            return Phase(value)
        except ValueError:
            raise self.fail(place, f"{value!r} is not a phase (one of {', '.join(p.value for p in Phase)})") from None

    def deployment(self, obj: Mapping, key: str, where: str) -> Deployment | None:
        d = self.get(obj, key, dict, where, optional=True)
        if d is None:
            return None
        place = f"{where}.{key}"
        record = self.get(d, "record", str, place) if "record" in d else ""
        return Deployment(*(self.get(d, k, str, place) for k in ("release", "model_revision", "env_digest", "unit_digest")),
                          record=record)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in ts))


def from_json(text: str, source: str = "rollout state") -> RolloutState:
    """Read a state written by ``to_json``; anything else raises ``StateError`` saying where and why.

    >>> from_json('{"kind": "mineru-fleet-rollout", "schema": 1, "id": "r1"', source="r1.json")
    Traceback (most recent call last):
    ...
    mineru_fleet.core.rollout.StateError: r1.json: line 1 column 57: not complete JSON (...). The file was cut short ...
    """
    r = _Reader(source)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise r.fail(f"line {e.lineno} column {e.colno}", f"not complete JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise r.fail("top level", "not a JSON object")
    if doc.get("kind") != KIND:
        raise r.fail("kind", f"{doc.get('kind')!r} is not {KIND!r}: not a rollout state file")
    schema = r.get(doc, "schema", int, "")
    if schema != SCHEMA:
        raise StateError(
            f"{source}: schema {schema}, this mineru-fleet reads schema {SCHEMA}: finish or roll back that rollout "
            "with the mineru-fleet version that started it"
        )
    rid = r.get(doc, "id", str, "")
    if not rid:
        raise r.fail("id", "empty")
    target = r.get(doc, "target", dict, "")
    o = r.get(doc, "options", dict, "")
    try:
        options = Options(r.get(o, "canary", int, "options"), r.get(o, "batch", str, "options"), r.get(o, "max_fail", str, "options"))
    except FlagError as e:
        raise r.fail("options", str(e)) from None
    created, updated = r.number(doc, "created", ""), r.number(doc, "updated", "")
    stop_reason = r.get(doc, "stop_reason", str, "", optional=True)
    rows = r.get(doc, "servers", list, "")
    if not rows:
        raise r.fail("servers", "empty: a rollout has at least one server")
    servers: list[ServerState] = []
    for i, row in enumerate(rows):
        where = f"servers[{i}]"
        if not isinstance(row, dict):
            raise r.fail(where, "not an object")
        try:
            srv = Server(r.get(row, "host", str, where), r.get(row, "instance", int, where))
        except StateError:
            raise
        except ValueError as e:
            raise r.fail(where, str(e)) from None
        batch = r.get(row, "batch", int, where)
        if batch < 0:
            raise r.fail(f"{where}.batch", f"{batch} is negative")
        phase = r.phase(r.get(row, "phase", str, where), f"{where}.phase")
        failed_raw = r.get(row, "failed_at", str, where, optional=True)
        failed_at = None if failed_raw is None else r.phase(failed_raw, f"{where}.failed_at")
        if phase is Phase.FAILED and failed_at is None:
            raise r.fail(f"{where}.failed_at", f"{srv} is failed but the failed step is not recorded")
        if failed_at is not None and failed_at not in ACTIVE:
            raise r.fail(f"{where}.failed_at", f"{failed_at} is not a phase whose step can fail")
        history = []
        for j, item in enumerate(r.get(row, "history", list, where)):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
                raise r.fail(f"{where}.history[{j}]", "expected [phase, time]")
            history.append((r.phase(item[0], f"{where}.history[{j}]"), float(item[1])))
        servers.append(ServerState(
            srv, batch, phase,
            previous=r.deployment(row, "previous", where), expected=r.deployment(row, "expected", where),
            failed_at=failed_at, error=r.get(row, "error", str, where, optional=True), history=tuple(history),
        ))
    seen: set[Server] = set()
    for i, s in enumerate(servers):
        if s.server in seen:
            raise r.fail(f"servers[{i}]", f"{s.server} appears twice")
        seen.add(s.server)
    batches = sorted({s.batch for s in servers})
    if batches != list(range(len(batches))):
        raise r.fail("servers[*].batch", f"batches {batches} are not numbered 0, 1, 2, ... without a gap")
    if [s.batch for s in servers] != sorted(s.batch for s in servers):
        raise r.fail("servers", "not in rollout order (batch by batch)")
    return RolloutState(rid, target, options, tuple(servers), created, updated, stop_reason)


# --------------------------------------------------------------------------------------------
# --resume: what the recorded state and the live fleet say together


class Balancer(StrEnum):
    """The balancer's view of a server, from the ``status`` field of HAProxy's ``show stat``."""

    UP = "UP"
    DRAIN = "DRAIN"
    MAINT = "MAINT"
    DOWN = "DOWN"


def parse_haproxy_status(status: str) -> Balancer:
    """Map a ``show stat`` server status to UP/DRAIN/MAINT/DOWN (transitions count as where they are now).

    ``UP 1/3`` (going down, still served) and ``no check`` are UP; ``NOLB`` (weight 0) and
    ``DRAIN (agent)`` are DRAIN; ``DOWN 1/2`` (coming up, not served yet) is DOWN; ``MAINT (via x/y)``
    and ``MAINT (resolution)`` are MAINT.

    >>> parse_haproxy_status("UP 1/3"), parse_haproxy_status("MAINT (via be/srv)")
    (<Balancer.UP: 'UP'>, <Balancer.MAINT: 'MAINT'>)
    """
    word = status.strip().split(" ")[0].upper() if status.strip() else ""
    if status.strip().lower() == "no check":
        return Balancer.UP
    mapping = {"UP": Balancer.UP, "DRAIN": Balancer.DRAIN, "NOLB": Balancer.DRAIN, "MAINT": Balancer.MAINT, "DOWN": Balancer.DOWN}
    if word not in mapping:
        raise ValueError(f"HAProxy server status {status!r} is not one of UP, DOWN, NOLB, DRAIN, MAINT, no check")
    return mapping[word]


@dataclass(frozen=True)
class Observation:
    """What the controller sees of one server now: the balancer, the host, the unit, the deployment record.

    >>> Observation.unreachable(Balancer.MAINT).reachable
    False
    """

    reachable: bool  # the host answered
    balancer: Balancer | None  # None: the balancer has no such server
    active: bool | None = None  # systemctl is-active mineru-vllm@N (None when unreachable)
    deployment: Deployment | None = None  # the host's current deployment record

    @classmethod
    def unreachable(cls, balancer: Balancer | None) -> Observation:
        return cls(False, balancer)


@dataclass(frozen=True)
class Decision:
    """What ``--resume`` does with one server: the phase it goes on from, the rule that said so, and why.

    ``phase`` None means the rollout cannot decide for this server (someone else changed it): the
    resume is refused until an operator settles it.
    """

    server: Server
    recorded: Phase
    phase: Phase | None
    rule: str
    reason: str

    @property
    def fails(self) -> bool:
        """The server becomes ``failed`` now (and counts against ``--max-fail`` of its batch)."""
        return self.phase is Phase.FAILED and self.recorded is not Phase.FAILED


_IN = {Balancer.UP, Balancer.DRAIN}  # the balancer may send it requests (DRAIN: persistent ones)


def _runs_expected(s: ServerState, o: Observation) -> bool:
    return s.expected is not None and o.deployment == s.expected


def _drifted(s: ServerState, o: Observation) -> bool:
    return s.expected is not None and o.deployment is not None and o.deployment != s.expected


@dataclass(frozen=True)
class Rule:
    """One row of the resume table: recorded phases, a condition on the live view, the phase to go on from."""

    name: str
    phases: frozenset[Phase]
    when: Callable[[ServerState, Observation], bool]
    then: Phase | str  # a phase, SAME (redo the recorded phase's step) or HOLD (refuse to resume)
    reason: str


SAME = "same"  # Rule.then: go on from the recorded phase, redoing its step
HOLD = "hold"  # Rule.then: refuse to resume until an operator settles this server

_FINAL = frozenset({Phase.DONE, Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED, Phase.SKIPPED, Phase.FAILED})

#: The resume table, first matching row wins. Each step is idempotent, so "redo" is always safe;
#: the rows only decide where redoing must start so that no server gets traffic while it changes.
RESUME_RULES: tuple[Rule, ...] = (
    Rule("settled-stays", _FINAL, lambda s, o: True, SAME,
         "its part is over (failed servers wait for their rollback)"),
    Rule("pending-untouched", frozenset({Phase.PENDING}), lambda s, o: True, SAME,
         "not reached yet; its batch will handle it"),
    Rule("unreachable-fails", frozenset(ACTIVE), lambda s, o: not o.reachable, Phase.FAILED,
         "the host does not answer (counts against --max-fail)"),
    Rule("unreachable-rollback-fails", frozenset({Phase.ROLLING_BACK}), lambda s, o: not o.reachable, Phase.ROLLBACK_FAILED,
         "the host does not answer, its rollback cannot finish"),
    Rule("absent-from-balancer-fails", frozenset(ACTIVE), lambda s, o: o.balancer is None, Phase.FAILED,
         "the balancer has no such server (deploy the balancer role first)"),
    Rule("rollback-redo", frozenset({Phase.ROLLING_BACK}), lambda s, o: True, SAME,
         "the rollback is redone (it downloads nothing)"),
    Rule("draining-redo", frozenset({Phase.DRAINING}), lambda s, o: True, SAME,
         "drain again and wait until idle"),
    Rule("back-in-rotation-redrain", frozenset({Phase.DRAINED, Phase.MAINT, Phase.DEPLOYING, Phase.GATING}),
         lambda s, o: o.balancer in _IN, Phase.DRAINING,
         "the balancer may send it requests again: drain again before going on"),
    Rule("drained-to-maint", frozenset({Phase.DRAINED, Phase.MAINT}), lambda s, o: True, Phase.MAINT,
         "out of the balancer: (re)set maintenance and go on"),
    Rule("deployed-to-gate", frozenset({Phase.DEPLOYING}), lambda s, o: _runs_expected(s, o) and o.active is True, Phase.GATING,
         "the host already runs the target and the unit is active: gate it"),
    Rule("deploying-redo", frozenset({Phase.DEPLOYING}), lambda s, o: True, SAME,
         "deploy again (pyinfra converges what is missing)"),
    Rule("gating-drifted-redeploy", frozenset({Phase.GATING}), lambda s, o: _drifted(s, o), Phase.DEPLOYING,
         "the host no longer runs the target: deploy again"),
    Rule("gating-redo", frozenset({Phase.GATING}), lambda s, o: True, SAME, "gate again"),
    Rule("serving-drifted-redrain", frozenset({Phase.ENABLING, Phase.UP, Phase.SOAKING}),
         lambda s, o: _drifted(s, o) and o.balancer in _IN, Phase.DRAINING,
         "it serves something other than the target: drain it and deploy again"),
    Rule("enabling-drifted-redeploy", frozenset({Phase.ENABLING, Phase.UP, Phase.SOAKING}),
         lambda s, o: _drifted(s, o), Phase.DEPLOYING,
         "out of the balancer and not on the target: deploy again"),
    Rule("stopped-after-deploy-fails", frozenset({Phase.ENABLING, Phase.UP, Phase.SOAKING}),
         lambda s, o: o.active is False, Phase.FAILED,
         "the unit is not active after its deploy was gated"),
    Rule("enabling-seen-up", frozenset({Phase.ENABLING}), lambda s, o: o.balancer is Balancer.UP, Phase.UP,
         "the balancer sees it UP"),
    Rule("enabling-redo", frozenset({Phase.ENABLING}), lambda s, o: True, SAME,
         "put it back (ready) and wait until UP"),
    Rule("serving-soak-again", frozenset({Phase.UP, Phase.SOAKING}), lambda s, o: o.balancer is Balancer.UP, Phase.SOAKING,
         "serving: soak again for the full time"),
    Rule("serving-went-down-fails", frozenset({Phase.UP, Phase.SOAKING}), lambda s, o: o.balancer is Balancer.DOWN, Phase.FAILED,
         "the balancer's health check took it DOWN after it was UP"),
    Rule("serving-changed-by-someone-hold", frozenset({Phase.UP, Phase.SOAKING}), lambda s, o: o.balancer in (Balancer.DRAIN, Balancer.MAINT),
         HOLD,
         "the rollout left it UP but the balancer says {balancer}: someone else drained it; "
         "`mineru-fleet enable` it or finish that work, then resume"),
)


def resume_rule(s: ServerState, o: Observation | None) -> Rule:
    """The first row of ``RESUME_RULES`` for a server and what is seen of it (None: pending or settled).

    >>> resume_rule(ServerState(Server("a"), 0, Phase.MAINT), Observation.unreachable(Balancer.MAINT)).name
    'unreachable-fails'
    """
    for rule in RESUME_RULES:
        if s.phase in rule.phases and rule.when(s, o):  # type: ignore[arg-type]
            return rule
    raise AssertionError(f"no resume rule for {s.server} in {s.phase}")  # the table covers every phase


def reconcile(state: RolloutState, observations: Mapping[Server, Observation]) -> tuple[Decision, ...]:
    """Decide, for ``--resume``, where each server goes on from, by the first matching row of ``RESUME_RULES``.

    Servers that are pending or settled need no observation; every other one does.

    >>> st = new_rollout("r", {}, ["a:0"], Options(canary=0), at=0)
    >>> for p in ("draining", "drained"):
    ...     st = step(st, "a:0", p, at=1)
    >>> d, = reconcile(st, {Server("a"): Observation(True, Balancer.UP, True)})
    >>> d.rule, str(d.phase)
    ('back-in-rotation-redrain', 'draining')
    """
    out = []
    for s in state.servers:
        o = observations.get(s.server)
        if o is None and s.phase not in _FINAL | {Phase.PENDING}:
            raise RolloutError(f"{s.server} is {s.phase} in rollout {state.id}: resume needs what the balancer and the host say about it")
        rule = resume_rule(s, o)
        then = s.phase if rule.then == SAME else None if rule.then == HOLD else Phase(rule.then)
        balancer = "absent" if o is None or o.balancer is None else o.balancer.value
        out.append(Decision(s.server, s.phase, then, rule.name, rule.reason.format(balancer=balancer)))
    return tuple(out)


def apply_decisions(state: RolloutState, decisions: Iterable[Decision], at: float) -> RolloutState:
    """The state ``--resume`` goes on from: each server moved to its decided phase (history keeps it).

    Refuses (``RolloutError`` naming the servers) when a decision holds. A move to ``failed`` records
    the recorded phase as the failed step and the rule's reason as the cause.

    >>> st = new_rollout("r", {}, ["a:0"], Options(canary=0), at=0)
    >>> for p in ("draining", "drained", "maint"):
    ...     st = step(st, "a:0", p, at=1)
    >>> st = apply_decisions(st, reconcile(st, {Server("a"): Observation.unreachable(Balancer.MAINT)}), at=9)
    >>> str(st.get("a:0").phase), str(st.get("a:0").failed_at)
    ('failed', 'maint')
    """
    decisions = tuple(decisions)
    held = [d for d in decisions if d.phase is None]
    if held:
        raise RolloutError("cannot resume: " + "; ".join(f"{d.server} ({d.rule}): {d.reason}" for d in held))
    out = state
    for d in decisions:
        s = out.get(d.server)
        if d.phase is s.phase:
            continue
        if d.phase is Phase.FAILED:
            new = replace(s, phase=Phase.FAILED, failed_at=s.phase, error=f"on resume: {d.reason}")
        elif d.phase is Phase.ROLLBACK_FAILED:
            new = replace(s, phase=Phase.ROLLBACK_FAILED, error=f"on resume: {d.reason}")
        else:
            new = replace(s, phase=d.phase)
        out = _replace_server(out, replace(new, history=(*s.history, (d.phase, float(at)))), at)
    return out


# --------------------------------------------------------------------------------------------
# --rollback


@dataclass(frozen=True)
class RollbackStep:
    """One server to take back: ``enable`` (only its balancer entry was changed) or ``redeploy``
    (its previous deployment goes back on: drain, maintenance, deploy, gate, enable), or
    ``impossible`` (no previous deployment recorded)."""

    server: Server
    batch: int
    action: str
    previous: Deployment | None
    reason: str


def rollback_steps(state: RolloutState, batch: int | None = None) -> tuple[RollbackStep, ...]:
    """Which servers ``--rollback`` takes back to their previous deployment, and in what order.

    Only touched servers that are not rolled back yet. Order: the latest batch first (the one
    out of the balancer, if any), and in a batch the servers already out first, then the stable
    order; each batch is taken back with the same bound as it was rolled out. ``batch`` limits it
    to one batch (what ``judge_batch`` asks when a batch stops the rollout).

    >>> st = new_rollout("r", {}, ["a:0", "b:0"], Options(canary=0), at=0)
    >>> st = step(step(st, "a:0", "draining", at=1), "a:0", "failed", at=2, error="drain timed out")
    >>> [(str(r.server), r.action) for r in rollback_steps(st)]
    [('a:0', 'enable')]
    """
    steps = []
    for s in state.servers:
        if batch is not None and s.batch != batch:
            continue
        if not s.touched or s.phase is Phase.ROLLED_BACK:
            continue
        untouched_host = (s.phase in HOST_UNTOUCHED) or (s.phase is Phase.FAILED and s.failed_at in HOST_UNTOUCHED)
        if untouched_host:
            action, why = "enable", f"{s.phase}{' at ' + str(s.failed_at) if s.failed_at else ''}: its host was not changed"
        elif s.previous is None:
            action, why = "impossible", "no previous deployment was recorded for it"
        else:
            action, why = "redeploy", f"{s.phase}: back to release {s.previous.release}, model revision {s.previous.model_revision}"
        steps.append(RollbackStep(s.server, s.batch, action, s.previous, why))
    return tuple(sorted(steps, key=lambda r: (-r.batch, state.get(r.server).phase not in OUT_OF_BALANCER)))
