"""Table-driven tests of the restore rule, written from the behaviour spec (§2.2, §3) and real logs."""
from __future__ import annotations

import pytest

from ckptsim.server import ServerRules, restore_decision

CUR = ServerRules(10573)

# (rules, n_lcp, n_cache L, n_prompt T, checkpoints) -> (n_past, restored, full, erased)
CASES = [
    # pure extension (has_new and n_past == L): nothing is searched, nothing erased (spec §2.2)
    ("extension", CUR, 1000, 1000, 1200, [500, 996], 1000, -1, False, []),
    # edit of the tail: newest k <= n_past is restored, later ones erased (k > pos_next + 1)
    ("edit", CUR, 800, 1000, 900, [500, 796, 996], 796, 796, False, [996]),
    # identical resend: has_new is false, so k <= n_past - 1 is required (spec §2.2)
    ("resend", CUR, 1000, 1000, 1000, [500, 996], 996, 996, False, []),
    # a checkpoint exactly at T is unusable for a resend; nothing else => full re-processing,
    # and the reset erases every checkpoint with k > 1
    ("resend-at-T", CUR, 1000, 1000, 1000, [1000], 0, -1, True, [1000]),
    # no checkpoint at or before the prefix => full re-processing, all erased
    ("no-usable", CUR, 800, 1000, 900, [900, 996], 0, -1, True, [900, 996]),
    # a k == 1 checkpoint is always acceptable since b8693 (#21510)
    ("k1", CUR, 5, 1000, 900, [1], 1, 1, False, []),
    # n_past == 0: no search, but the invalidation pass still runs (#20671, b8393)
    ("nothing-shared", CUR, 0, 1000, 900, [500], 0, -1, False, [500]),
    # b9231-b9508 (#23280) searched even on pure extensions: restores an older checkpoint
    ("b9300-extension", ServerRules(9300), 1000, 1000, 1200, [500, 996], 996, 996, False, []),
    # before b9231 an identical resend hit the failed seq_rm => full re-processing (spec §3)
    ("b8300-resend", ServerRules(8300), 1000, 1000, 1000, [500], 0, -1, True, []),
    # before #17009 (b7011) that seq_rm succeeds at the state's last position: n_past = T - 1, one
    # token decoded again (b6751/b6900 logs: "n_past was set to 2302", "n_past = 2302,
    # memory_seq_rm [2302, end)", then "prompt done, n_past = 2303, n_tokens = 1")
    ("b6900-resend", ServerRules(6900), 1000, 1000, 1000, [500], 999, -1, False, []),
    # b6685 picked k < n_past strictly
    ("b6700-strict", ServerRules(6700), 800, 1000, 900, [800], 0, -1, True, []),
    # the current rule accepts k == n_past when the prompt has new tokens
    ("cur-k-eq-npast", CUR, 800, 1000, 900, [800], 800, 800, False, []),
    # before b8400 the pass also runs without a search, against pos_min > max(0, n_past - 1):
    # a new session keeps only k <= 1 (b8156 and b8352 logs, tests/data/conformance/b8*-cache-ram-off)
    ("b8156-nothing-shared", ServerRules(8156), 0, 2004, 2200, [1, 1488], 0, -1, False, [1488]),
    # ... and after a restore it compares with the n_past found before it, not the restored k:
    # 796 is restored, 800 (= n_lcp) stays, where b8400+ (k > pos_next + 1) erases it
    ("b8352-erase-vs-lcp", ServerRules(8352), 800, 1000, 900, [500, 796, 800, 996], 796, 796, False, [996]),
    ("b8400-erase-vs-pos-next", ServerRules(8400), 800, 1000, 900, [500, 796, 800, 996], 796, 796, False,
     [800, 996]),
]


@pytest.mark.parametrize("name,rules,lcp,L,T,ckpts,n_past,restored,full,erased", CASES,
                         ids=[c[0] for c in CASES])
def test_restore_table(name, rules, lcp, L, T, ckpts, n_past, restored, full, erased):
    d = restore_decision(rules, lcp, L, T, ckpts)
    assert (d.n_past, d.restored, d.full_reprocess) == (n_past, restored, full)
    assert [k for k in ckpts if k > d.keep_upto] == erased


def test_real_log_009_task23():
    """009_* lines 81-100: checkpoints 8192..33187 exist; `n_past = 32876, slot.prompt.tokens.size()
    = 33198`; the scan checks 33186 then restores n_tokens = 32675 and erases 33187 (pos_next = 32675).
    The log has the probe line (b6766-b9314), 'Checking' (b8232+), n_swa = 0 (b8461+): a b9xxx build."""
    d = restore_decision(ServerRules(9000), 32876, 33198, 33219, [8192, 16384, 24576, 32675, 33187])
    assert d.restored == 32675 and d.n_past == 32675 and not d.full_reprocess
    assert [k for k in [8192, 16384, 24576, 32675, 33187] if k > d.keep_upto] == [33187]


def test_real_log_009_task258():
    """009_* lines 156-160: n_past = 33111 against [..., 32675, 32910, 33422] restores 32910
    and erases 33422."""
    ck = [8192, 16384, 24576, 32675, 32910, 33422]
    d = restore_decision(ServerRules(9000), 33111, 33620, 33700, ck)
    assert d.restored == 32910
    assert [k for k in ck if k > d.keep_upto] == [33422]
