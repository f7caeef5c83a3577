"""Checkpoint placement of llama-server per era, checked against the spec's worked examples and real logs."""
from __future__ import annotations

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
