"""Checkpoint placement of llama-server per era, checked against the spec's worked examples and real logs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsim.server import ServerRules, batch_counts, server_placement


def test_spec_example_current():
    """Spec §2.3: T=20000, n_past=0, -b 2048, -ub 512 => batches ..., [18432,19484), [19484,19996),
    [19996,20000) and checkpoints at 19484 and 19996."""
    plan = server_placement(ServerRules(10573), 0, 20000, (), None, 2048, 512, 8192, -1)
    assert plan.positions == (19484, 19996)
    assert plan.n_batches == 9 + 1 + 1 + 1   # 9 full batches to 18432, then 1052, 512 and 4 tokens
    # each 2048-token batch is 4 ubatches of 512; 1052 tokens are 3 (512, 512, 28); then 1 and 1
    assert plan.n_ubatches == 9 * 4 + 3 + 1 + 1


def test_batch_counts_by_hand():
    """[1000, 5000) with -b 2048 -ub 512 and a break at 4500: [1000,3048) is 4 ubatches,
    [3048,4500) 1452 tokens = 3 ubatches, [4500,5000) 1; -ub larger than -b is capped at -b."""
    assert batch_counts(1000, 5000, 2048, 512, (4500,)) == (3, 4 + 3 + 1)
    assert batch_counts(0, 4096, 2048, 4096) == (2, 2)
    assert batch_counts(10, 10, 2048, 512) == (0, 0)


def test_user_start_gets_checkpoint():
    """A user message start after n_past gets a checkpoint (b9775+, last_user exempt from spacing)."""
    plan = server_placement(ServerRules(10573), 5000, 9000, (100, 6000), 4996, 2048, 512, 8192, -1)
    assert 6000 in plan.positions
    assert plan.positions[-2:] == (8484, 8996)


def test_log_009_task0_every_n_era():
    """009_* lines 64-83 (b8286-b9314 era, every-N 8192): a 33191-token cold prompt got checkpoints
    at 8192, 16384, 24576 (every-N), 32675 (T-516) and 33187 (T-4); T = 33187 + 4."""
    plan = server_placement(ServerRules(9000), 0, 33191, (), None, 2048, 512, 256, 8192)
    assert plan.positions == (8192, 16384, 24576, 32675, 33187)


def test_log_009_task23_min64():
    """009_* line 101: after restoring 32675, task 23 created only 33215 (= T-4): T-516 = 32703
    is not more than 64 tokens after 32675 (the b6713-b9314 spacing rule)."""
    plan = server_placement(ServerRules(9000), 32675, 33219, (), 32675, 2048, 512, 256, 8192)
    assert plan.positions == (33215,)


def test_log_009_task170():
    """009_* lines 140-141: restored at 32675, T = 33426 => checkpoints at 32910 (T-516) and 33422 (T-4)."""
    plan = server_placement(ServerRules(9000), 32675, 33426, (), 32675, 2048, 512, 256, 8192)
    assert plan.positions == (32910, 33422)


def test_old_era_single_end_checkpoint():
    """b6685-b6712: one checkpoint per request, after the whole prompt (k = T)."""
    plan = server_placement(ServerRules(6700), 0, 5000, (), None, 2048, 512, 256, -1)
    assert plan.positions == (5000,)


def test_last_user_era_near_end_only_after_the_last_user_message():
    """b9315-b9774 (#22929): near-end checkpoints only after the last user message. Real log
    (xllamacpp b9538, `ckptsim conformance` chat workload, tests/data/conformance/): T=1467,
    -b 512 -ub 512, last user message at 987; batches break at T-512 = 955, 987 and T-4 = 1463,
    and checkpoints land at 987 and 1463 only (the batch at 955 is near the end but before it).
    From b9775 the 955 batch gets one too (near-end no longer waits for the user message)."""
    plan = server_placement(ServerRules(9538), 0, 1467, (987,), None, 512, 512, 256, -1)
    assert plan.positions == (987, 1463)
    assert server_placement(ServerRules(9538), 0, 1467, (), None, 512, 512, 256, -1).positions == (955, 1463)
    assert server_placement(ServerRules(9985), 0, 1467, (987,), None, 512, 512, 256, -1).positions == (955, 987, 1463)


def test_last_user_era_log_replays_every_decision():
    """The whole b9538 chat log (6 chat requests, edits of an earlier turn) validates at 100%."""
    from pathlib import Path

    from ckptsim.validate import validate_log
    log = Path(__file__).parent / "data" / "conformance" / "b9538-chat-user-turns.server.log.gz"
    doc = validate_log(log, version="b9538").to_json()
    assert doc["tasks"] == 6 and doc["decisions"] == 30 and doc["agreement"] == 1.0


def reference_placement(rules: ServerRules, start: int, T: int, users: tuple[int, ...], last_k: int | None,
                        n_batch: int, n_ubatch: int, min_step: int, every_n: int) -> tuple[list[int], int, int]:
    """Spec §2.3 (and §3's rows for b8286-b9984) walked as written: token by token into batches of at
    most n_batch, a break after the token where one is due, then the checkpoint decision at the
    batch start. No fast-forward, no search: the plain walk ``server_placement`` must equal."""
    nb = max(1, min(n_batch, T))              # the effective sizes server_placement works with
    ub = max(1, min(nb, n_ubatch))
    era = rules.era
    user_set = set(users) if era in ("last-user", "user") else set()
    last_user = max(user_set) if user_set else -1
    out: list[int] = []
    n_batches = n_ubatches = 0
    pos = start
    while pos < T:
        n_start = pos
        while pos < T and pos - n_start < nb:
            pos += 1                           # append the next prompt token; p = len(cache)
            if pos in user_set:
                if era == "last-user":
                    brk = pos == last_user
                elif rules.user_break_conditional:
                    brk = pos == last_user or last_k is None or pos > last_k + min_step
                else:
                    brk = True
                if brk:
                    break
            if T == pos + min(nb, 4 + ub) or T == pos + min(nb, 4):
                break
        n_batches += 1
        n_ubatches += -(-(pos - n_start) // ub)
        is_user = n_start == last_user if era == "last-user" else n_start in user_set
        near_end = T < pos + ub
        if era == "last-user" and n_start < last_user:
            near_end = False                   # #22929: near-end checkpoints only after the last user
        do = pos == T or is_user or near_end
        if rules.every_n and every_n > 0 and not do:
            do = n_start - (last_k or 0) >= every_n
        if n_start == 0:
            do = False                         # empty memory: pos_min < 0
        if do:
            if era == "near-end":
                do = not rules.min64 or (n_start >= 64 and (last_k is None or n_start > last_k + 64))
            elif era == "last-user":
                do = last_k is None or n_start > last_k + min_step
            else:
                do = (last_k is None or n_start == last_user or (near_end and rules.near_end_exempt)
                      or n_start > last_k + min_step)
        if do:
            out.append(n_start)
            last_k = n_start
    return out, n_batches, n_ubatches


@st.composite
def _placement_cases(draw):
    T = draw(st.integers(1, 40_000))
    start = draw(st.integers(0, T - 1))
    users = tuple(sorted(set(draw(st.lists(st.integers(1, max(1, T - 1)), max_size=8)))))
    last_k = draw(st.one_of(st.none(), st.integers(1, max(1, start))))
    return T, start, users, last_k


@settings(max_examples=300, deadline=None)
@given(case=_placement_cases(), build=st.sampled_from([8286, 9000, 9400, 9800, 9950, 9985, 10573, 11549]),
       n_batch=st.sampled_from([64, 512, 2048, 3000]), n_ubatch=st.sampled_from([32, 512, 4096]),
       min_step=st.sampled_from([0, 256, 8192]), every_n=st.sampled_from([-1, 1000, 8192]))
def test_placement_shortcut_equals_the_plain_walk(case, build, n_batch, n_ubatch, min_step, every_n):
    """``server_placement`` skips runs of plain batches at once and finds breaks by bisection; the
    plain walk of the spec gives the same checkpoints and batch counts."""
    T, start, users, last_k = case
    rules = ServerRules(build)
    plan = server_placement(rules, start, T, users, last_k, n_batch, n_ubatch, min_step, every_n)
    want = reference_placement(rules, start, T, users, last_k, n_batch, n_ubatch, min_step, every_n)
    assert (list(plan.positions), plan.n_batches, plan.n_ubatches) == want
