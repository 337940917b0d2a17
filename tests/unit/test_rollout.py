"""The pure core of fleet rollouts (issue 11): batches, flags, the phase machine, the state file, --resume.

Expected values are derived by hand from the rules (Ansible's documented ``serial`` and
``max_fail_percentage`` behaviour for batches and failures), never copied from the code's output.
"""

from __future__ import annotations

import doctest
import json

import pytest

from mineru_fleet.core import rollout as ro
from mineru_fleet.core.rollout import (
    Balancer, Deployment, FlagError, MaxFail, Observation, Options, Phase, RolloutError, Server,
    ServerState, StateError,
)

P = Phase


def hosts(n: int, prefix: str = "h") -> list[tuple[str, int]]:
    return [(f"{prefix}{i}", 0) for i in range(1, n + 1)]


def sizes(batches) -> list[int]:
    return [len(b.servers) for b in batches]


def names(batches) -> list[list[str]]:
    return [[str(s) for s in b.servers] for b in batches]


def test_docstring_examples_hold():
    res = doctest.testmod(ro, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 40 and res.failed == 0


# ---------------------------------------------------------------- batches (Ansible's serial)

@pytest.mark.parametrize("n, canary, batch, expected", [
    # serial: [1, 5, "20%"] on 10 hosts: 1, then 5, then 20% of 10 = 2 repeating over the 4 left
    (10, 0, "1,5,20%", [1, 5, 2, 2]),
    # serial: "30%" on 10 hosts: 3 per batch, the last batch takes what is left
    (10, 0, "30%", [3, 3, 3, 1]),
    # 25% of 10 = 2.5, rounded down: 2
    (10, 0, "25%", [2, 2, 2, 2, 2]),
    # 10% of 3 = 0.3 -> 0 -> at least one host per batch
    (3, 0, "10%", [1, 1, 1]),
    # a number larger than what is left takes what is left
    (5, 0, "2,10", [2, 3]),
    # 100% is the whole fleet at once
    (7, 0, "100%", [7]),
    # percentages are of the whole fleet, not of the hosts left: 50% of 4 = 2 even after 1 went
    (4, 0, "1,50%", [1, 2, 1]),
    # --canary 1 --batch 1,25%,50% on 8 = serial [1, 1, "25%", "50%"]: 1, 1, 2, 4
    (8, 1, "1,25%,50%", [1, 1, 2, 4]),
    # the canary counts in the whole fleet: 20% of 10 is 2 (not 20% of the 5 left, 1)
    (10, 5, "20%", [5, 2, 2, 1]),
    # 50% of 5 = 2.5 -> 2
    (5, 2, "50%", [2, 2, 1]),
    # a canary as large as the fleet is the whole rollout (as any size larger than what is left)
    (3, 5, "1", [3]),
    # one server with the default canary: one batch
    (1, 1, "1", [1]),
    # 29% of 100 is 29 (Ansible's float arithmetic gives 28 here: int(0.29 * 100) == 28)
    (100, 0, "29%", [29, 29, 29, 13]),
])
def test_batches_follow_ansible_serial(n, canary, batch, expected):
    batches = ro.plan_batches(hosts(n), canary=canary, batch=ro.parse_batch(batch))
    assert sizes(batches) == expected
    # every server exactly once, in the stable order
    flat = [s for b in batches for s in b.servers]
    assert flat == sorted(flat, key=ro.sort_key) and len(set(flat)) == n


def test_batches_name_servers_in_stable_order_and_label_the_canary():
    fleet = [("mf2", 1), ("mf10", 0), ("mf1", 0), ("mf2", 0), ("mf9", 0), ("mf1", 1)]
    batches = ro.plan_batches(fleet, canary=1, batch=ro.parse_batch("2"))
    # hosts in natural order (mf2 before mf10), instances in order within a host
    assert names(batches) == [["mf1:0"], ["mf1:1", "mf2:0"], ["mf2:1", "mf9:0"], ["mf10:0"]]
    assert [b.label for b in batches] == ["canary", "batch 1", "batch 2", "batch 3"]
    assert [b.canary for b in batches] == [True, False, False, False]
    assert ro.format_plan(batches).splitlines() == [
        "canary   mf1:0", "batch 1  mf1:1 mf2:0", "batch 2  mf2:1 mf9:0", "batch 3  mf10:0",
    ]


def test_batches_without_canary_start_at_batch_1():
    batches = ro.plan_batches(["b:0", "a:0", "c:0"], canary=0, batch=ro.parse_batch("2"))
    assert [b.label for b in batches] == ["batch 1", "batch 2"]
    assert names(batches) == [["a:0", "b:0"], ["c:0"]]


def test_order_does_not_depend_on_input_order():
    fleet = [("gpu-b", 1), ("gpu-a", 0), ("gpu-b", 0), ("gpu-a", 1)]
    assert names(ro.plan_batches(fleet, 1, ro.parse_batch("1"))) == names(ro.plan_batches(fleet[::-1], 1, ro.parse_batch("1")))


def test_empty_fleet_has_no_batch_and_duplicates_are_refused():
    assert ro.plan_batches([], canary=1) == ()
    with pytest.raises(ValueError, match="mf1:0 more than once"):
        ro.plan_batches([("mf1", 0), "mf1:0"])


@pytest.mark.parametrize("text", ["", "mf1:x", "mf1:-1", ":0", "a b:0"])
def test_server_names_are_checked(text):
    with pytest.raises(ValueError):
        Server.parse(text)


def test_server_parse_reads_host_and_instance():
    assert Server.parse("mf1:3") == Server("mf1", 3)
    assert Server.parse("mf1") == Server("mf1", 0)
    assert str(Server("mf1", 3)) == "mf1:3"


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("text, parsed", [
    ("1", [(1, False)]),
    ("1,25%,50%", [(1, False), (25, True), (50, True)]),
    (" 2 , 100% ", [(2, False), (100, True)]),
])
def test_batch_flag_reads(text, parsed):
    assert [(s.value, s.percent) for s in ro.parse_batch(text)] == parsed


@pytest.mark.parametrize("text, says", [
    ("", "no batch size"),
    ("   ", "no batch size"),
    ("0", "no server"),
    ("0%", "no server"),
    ("1,0", "no server"),
    ("-1", "negative"),
    ("1,-5%", "negative"),
    ("101%", "more than the whole fleet"),
    ("abc", "neither a whole number nor a percentage"),
    ("2.5", "neither a whole number nor a percentage"),
    ("1;2", "neither a whole number nor a percentage"),
    ("%", "neither a whole number nor a percentage"),
    ("1,,2", "an empty value"),
    ("1,", "an empty value"),
])
def test_batch_flag_errors_name_the_flag_and_the_fix(text, says):
    with pytest.raises(FlagError) as e:
        ro.parse_batch(text)
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert msg.startswith("--batch ") and says in msg and "e.g. --batch 1,25%,50%" in msg
    assert e.value.flag == "--batch"


@pytest.mark.parametrize("text, says", [("", "no number"), ("-1", "negative"), ("x", "not a whole number"), ("10%", "not a percentage"), ("1.5", "not a whole number")])
def test_canary_flag_errors(text, says):
    with pytest.raises(FlagError, match=r"^--canary .*" + says + r".*e\.g\. --canary 1"):
        ro.parse_canary(text)


def test_canary_flag_reads():
    assert ro.parse_canary("0") == 0 and ro.parse_canary(" 3 ") == 3


@pytest.mark.parametrize("text, says", [("", "no limit"), ("-1", "negative"), ("101%", "more than 100%"), ("x", "neither"), ("1.5", "neither"), ("-5%", "negative")])
def test_max_fail_flag_errors(text, says):
    with pytest.raises(FlagError, match=r"^--max-fail .*" + says + r".*e\.g\. --max-fail 0"):
        ro.parse_max_fail(text)


@pytest.mark.parametrize("limit, failures, size, exceeded", [
    ("0", 0, 3, False),
    ("0", 1, 3, True),       # default: any failure stops
    ("1", 1, 3, False),      # equal is not more
    ("1", 2, 3, True),
    ("30%", 3, 10, False),   # Ansible's docs: max_fail_percentage 30, serial 10: more than 3 of 10 aborts
    ("30%", 4, 10, True),
    ("50%", 2, 4, False),    # Ansible's docs: serial 4, abort at 2 failures needs 49, not 50
    ("49%", 2, 4, True),
    ("100%", 4, 4, False),   # never exceeded (the whole-batch rule still stops, see judge_batch)
    ("0%", 1, 5, True),
])
def test_max_fail_must_be_exceeded(limit, failures, size, exceeded):
    assert ro.parse_max_fail(limit).exceeded(failures, size) is exceeded


def test_options_refuse_bad_flags():
    with pytest.raises(FlagError, match="--batch"):
        Options(batch="0")
    with pytest.raises(FlagError, match="--max-fail"):
        Options(max_fail="lots")


# ---------------------------------------------------------------- the phase machine

#: the legal moves, written from the issue's phase list (not read from the code)
LEGAL = {
    ("pending", "draining"), ("pending", "skipped"),
    ("draining", "drained"), ("drained", "maint"), ("maint", "deploying"), ("deploying", "gating"),
    ("gating", "enabling"), ("enabling", "up"), ("up", "soaking"), ("soaking", "done"),
    *{(p, "failed") for p in ("draining", "drained", "maint", "deploying", "gating", "enabling", "up", "soaking")},
    ("failed", "rolling_back"), ("done", "rolling_back"),
    ("rolling_back", "rolled_back"), ("rolling_back", "rollback_failed"), ("rollback_failed", "rolling_back"),
}


@pytest.mark.parametrize("a, b", sorted(LEGAL))
def test_every_legal_move(a, b):
    s = ServerState(Server("mf1"), 0, phase=Phase(a))
    moved = ro.transition(s, b, at=7.0, error="cause" if b == "failed" else None)
    assert moved.phase == b and moved.history[-1] == (Phase(b), 7.0)
    if b == "failed":
        assert moved.failed_at == a and moved.error == "cause"


def test_nothing_else_is_legal():
    allowed = {(a.value, b.value) for a in Phase for b in Phase if ro.can_transition(a, b)}
    assert allowed == LEGAL


@pytest.mark.parametrize("a, b", [
    ("pending", "deploying"), ("pending", "failed"), ("draining", "maint"), ("maint", "draining"),
    ("done", "pending"), ("skipped", "draining"), ("rolled_back", "rolling_back"), ("failed", "done"),
    ("up", "enabling"), ("soaking", "rolled_back"),
])
def test_illegal_moves_are_refused_by_name(a, b):
    with pytest.raises(RolloutError, match=f"mf1:0: {a} -> {b} is not a legal move"):
        ro.transition(ServerState(Server("mf1"), 0, phase=Phase(a)), b, at=0.0, error="x")


def test_failure_needs_its_cause():
    with pytest.raises(RolloutError, match="cause"):
        ro.transition(ServerState(Server("mf1"), 0, phase=P.GATING), "failed", at=0.0)


def walk(state, server, *phases, at=1.0, error="boom"):
    for p in phases:
        state = ro.step(state, server, p, at=at, error=error if p == "failed" else None)
        at += 1.0
    return state


TO_DONE = ("draining", "drained", "maint", "deploying", "gating", "enabling", "up", "soaking", "done")


def test_never_more_servers_out_than_the_batch():
    st = ro.new_rollout("r", {}, hosts(4), Options(canary=0, batch="2"), at=0)
    st = walk(st, "h1:0", "draining", "drained", "maint")
    st = walk(st, "h2:0", "draining")
    assert set(ro.out_of_balancer(st)) == {Server("h1"), Server("h2")}
    # batch 1 (h3, h4) cannot start while batch 0 holds 2 out
    with pytest.raises(RolloutError, match="h3:0: cannot go draining: h1:0, h2:0 already out"):
        ro.step(st, "h3:0", "draining", at=5)
    # moves between out phases are fine with the bound reached
    st = walk(st, "h1:0", "deploying", "gating", "enabling")
    st = walk(st, "h1:0", "up")  # back in: one slot free
    st = walk(st, "h3:0", "draining")
    assert set(ro.out_of_balancer(st)) == {Server("h2"), Server("h3")}


def test_a_failed_server_stays_counted_until_rolled_back():
    st = ro.new_rollout("r", {}, hosts(2), Options(canary=0, batch="1"), at=0)
    st = walk(st, "h1:0", "draining", "drained", "maint", "deploying", "failed")
    with pytest.raises(RolloutError, match="already out"):
        ro.step(st, "h2:0", "draining", at=9)
    st = walk(st, "h1:0", "rolling_back")
    with pytest.raises(RolloutError, match="already out"):
        ro.step(st, "h2:0", "draining", at=9)
    st = walk(st, "h1:0", "rolled_back")
    assert ro.step(st, "h2:0", "draining", at=9).get("h2:0").phase is P.DRAINING


def test_draining_counts_as_out():
    st = ro.new_rollout("r", {}, hosts(2), Options(canary=0, batch="1"), at=0)
    st = walk(st, "h1:0", "draining")
    with pytest.raises(RolloutError):
        ro.step(st, "h2:0", "draining", at=2)


def test_rollback_of_a_done_server_takes_a_slot():
    st = ro.new_rollout("r", {}, hosts(2), Options(canary=0, batch="1"), at=0)
    st = walk(st, "h1:0", *TO_DONE)
    st = walk(st, "h2:0", *TO_DONE)
    st = walk(st, "h2:0", "rolling_back")
    with pytest.raises(RolloutError, match="h1:0: cannot go rolling_back: h2:0 already out"):
        ro.step(st, "h1:0", "rolling_back", at=30)


def test_history_gives_phase_durations():
    st = ro.new_rollout("r", {}, hosts(1), Options(canary=0), at=0)
    st = ro.step(st, "h1:0", "draining", at=10)
    st = ro.step(st, "h1:0", "drained", at=11.5)
    st = ro.step(st, "h1:0", "maint", at=12)
    st = ro.step(st, "h1:0", "deploying", at=12)
    st = ro.step(st, "h1:0", "gating", at=72)
    d = ro.phase_durations(st.get("h1:0"), until=75)
    assert d == {P.DRAINING: 1.5, P.DRAINED: 0.5, P.MAINT: 0.0, P.DEPLOYING: 60.0, P.GATING: 3.0}
    assert st.updated == 72 and st.created == 0


def test_is_idle_needs_both_balancer_and_vllm_quiet():
    assert ro.is_idle(0, 0, 0, 0)
    assert not ro.is_idle(1, 0, 0, 0) and not ro.is_idle(0, 2, 0, 0)
    assert not ro.is_idle(0, 0, 1, 0) and not ro.is_idle(0, 0, 0, 3)


# ---------------------------------------------------------------- after a batch: go on or stop

def test_one_failure_stops_with_the_default_max_fail_and_rolls_back_the_whole_batch():
    st = ro.new_rollout("r", {}, hosts(5), Options(canary=1, batch="2"), at=0)
    st = walk(st, "h1:0", *TO_DONE)
    assert ro.judge_batch(st, 0).proceed
    st = walk(st, "h2:0", *TO_DONE)
    st = walk(st, "h3:0", "draining", "drained", "maint", "deploying", "gating", "failed")
    v = ro.judge_batch(st, 1)
    assert not v.proceed and v.failed == (Server("h3"),)
    assert v.rollback == (Server("h3"), Server("h2"))  # failed first, then the done one
    assert "1 of 2 failed in batch 1, more than --max-fail 0" == v.reason
    st = ro.stop(st, v.reason, at=50)
    assert [s.phase for s in st.servers] == [P.DONE, P.DONE, P.FAILED, P.SKIPPED, P.SKIPPED]
    assert ro.next_batch(st) is None and st.stop_reason == v.reason


def test_failures_within_max_fail_go_on_and_roll_back_only_the_failed():
    st = ro.new_rollout("r", {}, hosts(6), Options(canary=0, batch="3", max_fail="1"), at=0)
    st = walk(st, "h1:0", *TO_DONE)
    st = walk(st, "h2:0", "draining", "failed")
    st = walk(st, "h3:0", *TO_DONE)
    v = ro.judge_batch(st, 0)
    assert v.proceed and v.failed == (Server("h2"),) and v.rollback == (Server("h2"),)
    # the rollback fails: asked again, the rollout stops (that server stays out of the balancer)
    st = walk(st, "h2:0", "rolling_back", "rollback_failed")
    v2 = ro.judge_batch(st, 0)
    assert not v2.proceed and "h2:0" in v2.reason


def test_percent_max_fail_per_batch():
    st = ro.new_rollout("r", {}, hosts(4), Options(canary=0, batch="4", max_fail="49%"), at=0)
    st = walk(st, "h1:0", "draining", "failed")
    st = walk(st, "h2:0", *TO_DONE)
    st = walk(st, "h3:0", *TO_DONE)
    st = walk(st, "h4:0", *TO_DONE)
    assert ro.judge_batch(st, 0).proceed  # 1 of 4 = 25% <= 49%
    st = walk(st, "h2:0", "rolling_back", "rolled_back")  # a rolled-back server still counts as failed
    assert not ro.judge_batch(st, 0).proceed  # 2 of 4 = 50% > 49%
    assert ro.judge_batch(st, 0, MaxFail(50, True)).proceed


def test_a_batch_where_every_server_failed_stops_even_at_100_percent():
    st = ro.new_rollout("r", {}, hosts(3), Options(canary=0, batch="2", max_fail="100%"), at=0)
    st = walk(st, "h1:0", "draining", "failed")
    st = walk(st, "h2:0", "draining", "drained", "failed")
    v = ro.judge_batch(st, 0)
    assert not v.proceed and v.reason == "every server of batch 0 failed"


def test_judging_an_unfinished_batch_is_refused():
    st = ro.new_rollout("r", {}, hosts(2), Options(canary=0, batch="2"), at=0)
    st = walk(st, "h1:0", *TO_DONE)
    st = walk(st, "h2:0", "draining")
    with pytest.raises(RolloutError, match="h2:0 still in progress"):
        ro.judge_batch(st, 0)
    with pytest.raises(RolloutError, match="no batch 7"):
        ro.judge_batch(st, 7)


def test_next_batch_is_the_first_with_a_pending_server():
    st = ro.new_rollout("r", {}, hosts(3), Options(canary=1, batch="1"), at=0)
    assert ro.next_batch(st) == 0
    st = walk(st, "h1:0", *TO_DONE)
    assert ro.next_batch(st) == 1
    st = walk(st, "h2:0", *TO_DONE)
    st = walk(st, "h3:0", *TO_DONE)
    assert ro.next_batch(st) is None


# ---------------------------------------------------------------- the state file

OLD = Deployment("r-0001", "rev-a", "sha256:env-a", "sha256:unit-a")
NEW = Deployment("r-0002", "rev-b", "sha256:env-b", "sha256:unit-a")


def sample_state():
    fleet = hosts(4)
    st = ro.new_rollout(
        "2025-01-02-a", {"model_revision": "rev-b", "settings": {"max_num_seqs": 8}}, fleet,
        Options(canary=1, batch="1,50%", max_fail="25%"), at=1000.0,
        previous={Server(h, i): OLD for h, i in fleet}, expected={Server(h, i): NEW for h, i in fleet[:3]},
    )
    st = walk(st, "h1:0", *TO_DONE, at=1001.0)
    st = walk(st, "h2:0", "draining", "drained", "maint", "deploying", "failed", at=1100.0, error='vLLM exited: "bad setting"\n')
    st = ro.stop(st, "canary ok, batch 1 failed", at=1200.5)
    return st


def test_state_round_trips():
    st = sample_state()
    text = ro.to_json(st)
    back = ro.from_json(text, source="r.json")
    assert back == st
    assert ro.to_json(back) == text
    doc = json.loads(text)
    assert doc["schema"] == 1 and doc["kind"] == "mineru-fleet-rollout"
    assert doc["servers"][1]["failed_at"] == "deploying" and doc["servers"][1]["previous"]["release"] == "r-0001"
    assert doc["servers"][3]["expected"] is None


def test_every_truncation_is_a_state_error():
    text = ro.to_json(sample_state())
    for cut in range(0, len(text) - 2):
        with pytest.raises(StateError, match="r.json: "):
            ro.from_json(text[:cut], source="r.json")


def edited(change) -> str:
    doc = json.loads(ro.to_json(sample_state()))
    change(doc)
    return json.dumps(doc)


def _set(path, value):
    def change(doc):
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return change


@pytest.mark.parametrize("change, says", [
    (lambda d: d.clear(), "kind"),
    (_set(["kind"], "something-else"), "not a rollout state file"),
    (_set(["schema"], 2), "schema 2, this mineru-fleet reads schema 1"),
    (_set(["schema"], "1"), "schema: expected a number"),
    (_set(["id"], ""), "id: empty"),
    (_set(["target"], ["rev-b"]), "target: expected an object"),
    (_set(["options", "batch"], "0"), "options: --batch '0'"),
    (_set(["options", "canary"], True), "options.canary: expected a number"),
    (_set(["servers"], []), "servers: empty"),
    (_set(["servers", 0], "h1:0"), r"servers\[0\]: not an object"),
    (_set(["servers", 0, "phase"], "drainin"), r"servers\[0\].phase: 'drainin' is not a phase"),
    (_set(["servers", 0, "instance"], "0"), r"servers\[0\].instance: expected a number"),
    (_set(["servers", 0, "instance"], -1), r"servers\[0\]: server h1: instance -1"),
    (_set(["servers", 0, "host"], KeyError), r"servers\[0\].host: missing"),
    (_set(["servers", 1, "failed_at"], None), r"servers\[1\].failed_at: h2:0 is failed but the failed step is not recorded"),
    (_set(["servers", 1, "failed_at"], "done"), r"servers\[1\].failed_at: done is not a phase whose step can fail"),
    (_set(["servers", 1, "previous", "release"], 7), r"servers\[1\].previous.release: expected a string"),
    (_set(["servers", 0, "history", 0], ["draining"]), r"servers\[0\].history\[0\]: expected \[phase, time\]"),
    (_set(["servers", 2, "host"], "h1"), r"servers\[2\]: h1:0 appears twice"),
    (_set(["servers", 3, "batch"], 9), "not numbered 0, 1, 2"),
    (lambda d: d["servers"].reverse(), "not in rollout order"),
    (_set(["created"], "yesterday"), "created: expected a number"),
])
def test_hand_edited_state_gives_a_clear_error(change, says):
    with pytest.raises(StateError, match=says) as e:
        ro.from_json(edited(change), source="r.json")
    assert str(e.value).startswith("r.json: ")


def test_not_json_at_all():
    with pytest.raises(StateError, match="r.json: line 1 column 1: not complete JSON"):
        ro.from_json("", source="r.json")
    with pytest.raises(StateError, match="top level: not a JSON object"):
        ro.from_json("[1, 2]", source="r.json")


def test_every_field_removed_or_retyped_is_a_state_error():
    """No edit of one field ends in anything but StateError (no KeyError, TypeError, AttributeError)."""
    base = json.loads(ro.to_json(sample_state()))
    paths = [[k] for k in base] + [["options", k] for k in base["options"]]
    paths += [["servers", 1, k] for k in base["servers"][1]] + [["servers", 1, "previous", k] for k in base["servers"][1]["previous"]]
    for path in paths:
        for value in (KeyError, [], {}, "x", 3.5, None, True):
            text = edited(_set(path, value))
            try:
                ro.from_json(text, source="r.json")
            except StateError:
                pass  # the clear error
            # an accepted edit is fine (e.g. error=None, a target of {}), anything else fails the test


# ---------------------------------------------------------------- --resume

def at_phase(phase: str, expected=NEW, previous=OLD, failed_at: str = "deploying"):
    """A one-server rollout whose server is recorded in ``phase``, reached by legal moves."""
    st = ro.new_rollout("r", {}, ["mf1:0"], Options(canary=0), at=0, previous={Server("mf1"): previous}, expected={Server("mf1"): expected})
    path = {
        "pending": (), "skipped": None, "done": TO_DONE,
        "failed": TO_DONE[:TO_DONE.index(failed_at) + 1] + ("failed",),
        "rolling_back": TO_DONE + ("rolling_back",),
        "rolled_back": TO_DONE + ("rolling_back", "rolled_back"),
        "rollback_failed": TO_DONE + ("rolling_back", "rollback_failed"),
    }
    if phase == "skipped":
        return ro.stop(st, "stopped", at=1)
    steps = path.get(phase, TO_DONE[:TO_DONE.index(phase) + 1] if phase in TO_DONE else ())
    return walk(st, "mf1:0", *steps)


def seen(balancer="MAINT", active=True, deployment=NEW, reachable=True):
    return Observation(reachable, None if balancer is None else Balancer(balancer), active if reachable else None, deployment if reachable else None)


OTHER = Deployment("r-0009", "rev-x", "sha256:env-x", "sha256:unit-x")

RESUME_CASES = [
    # (recorded phase, observation, expected rule, expected phase; None = hold)
    ("pending", seen("UP", deployment=OLD), "pending-untouched", "pending"),
    ("pending", seen(reachable=False), "pending-untouched", "pending"),
    ("done", seen("DOWN"), "settled-stays", "done"),
    ("failed", seen("MAINT"), "settled-stays", "failed"),
    ("skipped", seen("UP"), "settled-stays", "skipped"),
    ("draining", seen("UP", deployment=OLD), "draining-redo", "draining"),
    ("draining", seen("DRAIN", deployment=OLD), "draining-redo", "draining"),
    ("draining", seen(reachable=False, balancer="DRAIN"), "unreachable-fails", "failed"),
    # the brief's example: recorded drained but the balancer says UP -> drain again
    ("drained", seen("UP", deployment=OLD), "back-in-rotation-redrain", "draining"),
    ("drained", seen("DRAIN", deployment=OLD), "back-in-rotation-redrain", "draining"),
    ("drained", seen("MAINT", deployment=OLD), "drained-to-maint", "maint"),
    ("maint", seen("DOWN", deployment=OLD), "drained-to-maint", "maint"),
    ("maint", seen("MAINT", deployment=OLD), "drained-to-maint", "maint"),
    ("maint", seen("UP", deployment=OLD), "back-in-rotation-redrain", "draining"),
    # the brief's example: recorded maint and the host unreachable -> failed
    ("maint", seen("MAINT", reachable=False), "unreachable-fails", "failed"),
    ("maint", seen(None), "absent-from-balancer-fails", "failed"),
    # the brief's example: recorded deploying, the host already runs the target and is up -> gating
    ("deploying", seen("MAINT", active=True, deployment=NEW), "deployed-to-gate", "gating"),
    ("deploying", seen("MAINT", active=False, deployment=NEW), "deploying-redo", "deploying"),
    ("deploying", seen("MAINT", deployment=OLD), "deploying-redo", "deploying"),
    ("deploying", seen("MAINT", deployment=None), "deploying-redo", "deploying"),
    ("deploying", seen("UP"), "back-in-rotation-redrain", "draining"),
    ("gating", seen("MAINT"), "gating-redo", "gating"),
    ("gating", seen("MAINT", deployment=OTHER), "gating-drifted-redeploy", "deploying"),
    ("gating", seen("DRAIN"), "back-in-rotation-redrain", "draining"),
    ("enabling", seen("UP"), "enabling-seen-up", "up"),
    ("enabling", seen("MAINT"), "enabling-redo", "enabling"),
    ("enabling", seen("DOWN"), "enabling-redo", "enabling"),
    ("enabling", seen("MAINT", active=False), "stopped-after-deploy-fails", "failed"),
    ("enabling", seen("MAINT", deployment=OTHER), "enabling-drifted-redeploy", "deploying"),
    ("up", seen("UP"), "serving-soak-again", "soaking"),
    ("soaking", seen("UP"), "serving-soak-again", "soaking"),
    ("soaking", seen("DOWN"), "serving-went-down-fails", "failed"),
    ("soaking", seen("UP", active=False), "stopped-after-deploy-fails", "failed"),
    ("up", seen("UP", deployment=OTHER), "serving-drifted-redrain", "draining"),
    ("soaking", seen("MAINT"), "serving-changed-by-someone-hold", None),
    ("up", seen("DRAIN"), "serving-changed-by-someone-hold", None),
    ("rolling_back", seen("MAINT", deployment=OLD), "rollback-redo", "rolling_back"),
    ("rolling_back", seen(reachable=False, balancer="MAINT"), "unreachable-rollback-fails", "rollback_failed"),
    ("rolled_back", seen("UP", deployment=OLD), "settled-stays", "rolled_back"),
    ("rollback_failed", seen("MAINT"), "settled-stays", "rollback_failed"),
]


@pytest.mark.parametrize("recorded, obs, rule, then", RESUME_CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(RESUME_CASES)])
def test_resume_decision(recorded, obs, rule, then):
    st = at_phase(recorded)
    assert st.get("mf1:0").phase == recorded
    d, = ro.reconcile(st, {Server("mf1"): obs})
    assert d.rule == rule and d.recorded == recorded
    assert d.phase == (None if then is None else Phase(then))
    assert d.fails is (then == "failed" and recorded != "failed")


def test_every_resume_rule_has_a_case():
    assert {c[2] for c in RESUME_CASES} == {r.name for r in ro.RESUME_RULES}


def test_without_expected_deployment_a_deploy_is_redone_not_skipped():
    st = at_phase("deploying", expected=None)
    d, = ro.reconcile(st, {Server("mf1"): seen("MAINT", deployment=NEW)})
    assert d.rule == "deploying-redo"


def test_resume_needs_observations_of_servers_in_progress():
    with pytest.raises(RolloutError, match="mf1:0 is maint"):
        ro.reconcile(at_phase("maint"), {})
    assert ro.reconcile(at_phase("pending"), {})[0].phase is P.PENDING
    assert ro.reconcile(at_phase("done"), {})[0].phase is P.DONE


def test_resume_applies_and_the_rollout_goes_on_legally():
    """Controller killed mid-batch: one server deployed but not gated, the other drained then re-enabled by someone."""
    fleet = hosts(3)
    st = ro.new_rollout("r", {"model_revision": "rev-b"}, fleet, Options(canary=0, batch="2"), at=0,
                        previous={Server(h, i): OLD for h, i in fleet}, expected={Server(h, i): NEW for h, i in fleet})
    st = walk(st, "h1:0", "draining", "drained", "maint", "deploying")
    st = walk(st, "h2:0", "draining", "drained")
    st = ro.from_json(ro.to_json(st))  # what the killed controller left on disk
    obs = {Server("h1"): seen("MAINT", deployment=NEW), Server("h2"): seen("UP", deployment=OLD)}
    decisions = ro.reconcile(st, obs)
    assert [(str(d.server), d.phase) for d in decisions] == [("h1:0", P.GATING), ("h2:0", P.DRAINING), ("h3:0", P.PENDING)]
    st = ro.apply_decisions(st, decisions, at=100)
    assert st.get("h1:0").history[-1] == (P.GATING, 100.0)
    st = walk(st, "h1:0", "enabling", "up", "soaking", "done", at=101)
    st = walk(st, "h2:0", "drained", "maint", "deploying", "gating", "enabling", "up", "soaking", "done", at=101)
    assert ro.judge_batch(st, 0).proceed and ro.next_batch(st) == 1


def test_resume_failure_is_recorded_and_counted():
    st = at_phase("maint")
    st = ro.apply_decisions(st, ro.reconcile(st, {Server("mf1"): seen(reachable=False, balancer="MAINT")}), at=50)
    s = st.get("mf1:0")
    assert s.phase is P.FAILED and s.failed_at is P.MAINT and "does not answer" in s.error
    v = ro.judge_batch(st, 0)
    assert not v.proceed and v.failed == (Server("mf1"),)


def test_resume_is_refused_while_someone_else_holds_a_server():
    st = at_phase("soaking")
    with pytest.raises(RolloutError, match="cannot resume: mf1:0 .*balancer says MAINT"):
        ro.apply_decisions(st, ro.reconcile(st, {Server("mf1"): seen("MAINT")}), at=5)


@pytest.mark.parametrize("status, state", [
    ("UP", "UP"), ("UP 1/3", "UP"), ("no check", "UP"), ("DOWN", "DOWN"), ("DOWN 1/2", "DOWN"),
    ("DOWN (agent)", "DOWN"), ("DRAIN", "DRAIN"), ("DRAIN (agent)", "DRAIN"), ("NOLB", "DRAIN"), ("NOLB 1/3", "DRAIN"),
    ("MAINT", "MAINT"), ("MAINT (via vllm/mf1)", "MAINT"), ("MAINT (resolution)", "MAINT"),
])
def test_haproxy_status_words(status, state):
    assert ro.parse_haproxy_status(status) is Balancer(state)


@pytest.mark.parametrize("status", ["", "OPEN", "weird"])
def test_unknown_haproxy_status_is_an_error(status):
    with pytest.raises(ValueError, match="not one of UP"):
        ro.parse_haproxy_status(status)


# ---------------------------------------------------------------- --rollback

def test_rollback_takes_the_latest_batch_first_and_out_servers_first():
    fleet = hosts(5)
    st = ro.new_rollout("r", {}, fleet, Options(canary=1, batch="2"), at=0, previous={Server(h, i): OLD for h, i in fleet})
    st = walk(st, "h1:0", *TO_DONE)                           # canary done
    st = walk(st, "h2:0", *TO_DONE)                           # batch 1
    st = walk(st, "h3:0", "draining", "drained", "maint", "deploying", "gating", "failed")
    st = ro.stop(st, "batch 1 failed", at=90)                 # h4, h5 skipped
    steps = ro.rollback_steps(st)
    assert [(str(r.server), r.action) for r in steps] == [("h3:0", "redeploy"), ("h2:0", "redeploy"), ("h1:0", "redeploy")]
    assert all(r.previous == OLD for r in steps)
    assert [str(r.server) for r in ro.rollback_steps(st, batch=1)] == ["h3:0", "h2:0"]
    # what judge_batch asks to roll back when it stops is the same set
    assert set(ro.judge_batch(st, 1).rollback) == {r.server for r in ro.rollback_steps(st, batch=1)}


@pytest.mark.parametrize("failed_at, action", [
    ("draining", "enable"), ("drained", "enable"), ("maint", "enable"),
    ("deploying", "redeploy"), ("gating", "redeploy"), ("enabling", "redeploy"), ("soaking", "redeploy"),
])
def test_rollback_only_re_enables_a_server_whose_host_was_not_changed(failed_at, action):
    st = at_phase("failed", failed_at=failed_at)
    (r,) = ro.rollback_steps(st)
    assert r.action == action


def test_rollback_without_previous_deployment_is_impossible_and_untouched_servers_are_left():
    st = at_phase("done", previous=None)
    (r,) = ro.rollback_steps(st)
    assert r.action == "impossible" and "no previous deployment" in r.reason
    assert ro.rollback_steps(at_phase("pending")) == ()
    assert ro.rollback_steps(at_phase("skipped")) == ()
    assert ro.rollback_steps(at_phase("rolled_back")) == ()
    assert [r.action for r in ro.rollback_steps(at_phase("rollback_failed"))] == ["redeploy"]


def test_rollback_after_resume_leaves_nothing_drained():
    """A drain in progress when the controller died is taken back by re-enabling, not by a deploy."""
    st = at_phase("drained")
    (r,) = ro.rollback_steps(st)
    assert r.action == "enable" and r.server == Server("mf1")
