"""The field's policies (policies.py, rules in engines.py): the rule that defines each, on small hand-derived cases."""
from __future__ import annotations

import pytest

from ckptsim.cost import load_profile
from ckptsim.engines import MARCONI_ALPHAS, exact_restore, sub_trace
from ckptsim.policies import Checkpoint, Marconi, Policy, PrefillView, make_policy
from ckptsim.records import Request
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import Trace, TraceHeader

CFG = ServerConfig(n_slots=1, cache_ram_mib=0)


def view(start: int, T: int, **kw) -> PrefillView:
    base = dict(request_id=kw.pop("request_id", 0), slot=0, start=start, n_prompt=T,
                user_starts=kw.pop("user_starts", ()), tool_starts=(), ckpt_n_tokens=kw.pop("ckpts", ()),
                n_batch=2048, n_ubatch=512)
    return PrefillView(**base, **kw)


def trace_of(*reqs: tuple) -> Trace:
    """(session, n_prompt, n_output, parent, n_shared) per request, one second apart."""
    return Trace(TraceHeader(name="t"), [Request(i, s, float(i), T, o, p, sh)
                                         for i, (s, T, o, p, sh) in enumerate(reqs)])


# --- the engines' restore rule ------------------------------------------------------------------

@pytest.mark.parametrize("lcp,cache,T,ks,live,n_past,restored,full,keep", [
    (100, 100, 150, [50], True, 100, -1, False, 100),     # prompt extends the live state
    (100, 100, 150, [50], False, 50, 50, False, 100),     # engines without a live state: deepest state
    (100, 120, 100, [60, 100], True, 60, 60, False, 100),  # full resend: one token left, 100 kept
    (40, 120, 300, [50], True, 0, -1, True, 40),          # nothing inside the prefix: from 0
    (0, 120, 300, [50], False, 0, -1, False, 0),          # nothing shared: no search, no loss
])
def test_exact_restore(lcp, cache, T, ks, live, n_past, restored, full, keep):
    d = exact_restore(lcp, cache, T, ks, live_state=live)
    assert (d.n_past, d.restored, d.full_reprocess, d.keep_upto) == (n_past, restored, full, keep)


# --- vLLM ---------------------------------------------------------------------------------------

def test_vllm_all_states_on_the_block_grid_and_retention():
    # T = 1200, block 528: states at 528 and 1056; retention 0 keeps only the replay boundary
    # (the deepest state a resend can resume from, <= T - 1 = 1199): 1056
    assert make_policy("vllm-all").place(view(0, 1200)).positions == (528, 1056)
    assert make_policy("vllm-all:retention=0").place(view(0, 1200)).positions == (1056,)
    # retention 1500: one state per 1500-token segment (the last block boundary in it: 1056 for
    # [0, 1500), 2640 for [1500, 3000)) plus the replay boundary 3168 of T = 3200
    pos = make_policy("vllm-all:retention=1500").place(view(0, 3200)).positions
    assert pos == (1056, 2640, 3168)
    # decode steps completing a block keep it (T 1200, 700 generated tokens: 1584)
    assert make_policy("vllm-all").after_generation(view(0, 1200), 1899) == (1584,)
    assert make_policy("vllm-all:retention=0").after_generation(view(0, 1200), 1899) == ()


def test_vllm_align_chunks():
    # budget 2048, block 528: chunks cut to 3 blocks (1584); the chunk crossing the last block
    # boundary of T = 5000 (5000 - 5000 % 528 = 4752) stops there; the 248-token tail keeps none
    pol = make_policy("vllm-align:budget=2048")
    assert pol.place(view(0, 5000)).positions == (1584, 3168, 4752)


def test_vllm_shared_prefix_junction():
    # the prompt leaves a seen sequence at 2000: with --prefix-match-unit 64 the junction state is
    # at 1984 (2000 // 64 * 64); on the block grid it would be 1584, already a block state
    pol = make_policy("vllm-align:retention=0,shared=1,unit=64")
    assert pol.place(view(0, 5000, seen_prefix_n_tokens=2000)).positions == (1984, 4752)


def test_vllm_block_granular_reuse_in_a_replay():
    # r1 extends r0's whole sequence (1210 tokens). llama-server continues its live state (1209
    # cached); vLLM resumes from the block state at 1056 and recomputes 244 tokens
    tr = trace_of(("a", 1200, 10, -1, 0), ("a", 1300, 10, 0, 1210))
    server = simulate(tr, "llama-server", CFG).results[1]
    vllm = simulate(tr, "vllm-all", CFG).results[1]
    assert (server.n_cached, vllm.n_cached, vllm.restored_n_tokens) == (1209, 1056, 1056)
    # a prompt shorter than one block never hits, however often it is resent
    short = trace_of(("a", 500, 10, -1, 0), ("a", 520, 10, 0, 510))
    assert simulate(short, "vllm-all", CFG).results[1].n_cached == 0


# --- SGLang -------------------------------------------------------------------------------------

def test_sglang_no_buffer_end_state_and_chunks():
    pol = make_policy("sglang-no-buffer")
    assert pol.place(view(0, 20000)).positions == (8192, 16384)     # chunked-prefill chunk ends
    assert pol.after_generation(view(0, 1000), 1049) == (1049,)
    # r1 extends r0 (1000 + 50 generated, 1049 cached): resumes from r0's end state; r2 edits r1's
    # prompt at 1020, below every state but r0's end (1049 > 1020): from 0
    tr = trace_of(("a", 1000, 50, -1, 0), ("a", 1100, 5, 0, 1050), ("a", 1100, 5, 1, 1020))
    res = simulate(tr, "sglang-no-buffer", CFG).results
    assert (res[1].restored_n_tokens, res[1].n_cached) == (1049, 1049)
    assert (res[2].n_cached, res[2].full_reprocess) == (0, True)


def test_sglang_extra_buffer_tracks_branch_points():
    pol = make_policy("sglang-extra-buffer")
    # the prompt leaves a seen sequence at 700: the branch state on the 64 grid, 640
    assert pol.place(view(0, 1000, seen_prefix_n_tokens=700)).positions == (640,)
    # no branch: the last 64-aligned position inside the prefill, (1000 - 1) // 64 * 64 = 960
    assert pol.place(view(0, 1000)).positions == (960,)
    # generation: the last multiple of the track interval (256) past the prompt, if any
    assert pol.after_generation(view(0, 1000), 1300) == (1280,)
    assert pol.after_generation(view(0, 1000), 1020) == ()


# --- Marconi ------------------------------------------------------------------------------------

def test_marconi_admits_branch_points_and_the_last_decoded_token():
    pol = make_policy("marconi")
    assert pol.place(view(0, 3000, branch_n_tokens=2000)).positions == (2000,)
    assert pol.place(view(0, 3000)).positions == ()
    assert pol.after_generation(view(0, 3000), 3400) == (3400,)


def test_marconi_eviction_recency_vs_flop_efficiency():
    # No profile: a state saves the tokens since its parent. A: 1000 (created by request 0),
    # B: 100 (request 3), C: 3900 (request 4); now = 5. Recency 1/(now - use) -> normalised
    # A 0, B .375, C 1; efficiency normalised A .237, B 0, C 1.
    ck = [Checkpoint(1000, 1.0, 0), Checkpoint(1100, 1.0, 3), Checkpoint(5000, 1.0, 4)]
    assert make_policy("marconi:alpha=0").victim(ck, 6000) == 0      # least recent
    assert make_policy("marconi:alpha=2").victim(ck, 6000) == 1      # .375 + 0 < 0 + .47


def test_marconi_tunes_alpha_on_past_requests_only():
    # 12 sessions of 3 turns sharing a 3000-token system prompt; cap 2 forces evictions early
    reqs = []
    for s in range(12):
        reqs.append((f"s{s}", 5000 + 100 * s, 200, 0 if s else -1, 3000 if s else 0))
        for turn in range(2):
            prev = len(reqs) - 1
            n_seq = reqs[prev][1] + reqs[prev][2]
            reqs.append((f"s{s}", n_seq + 500, 200, prev, n_seq))
    tr = trace_of(*reqs)
    cfg = ServerConfig(n_slots=1, ctx_checkpoints=2, cache_ram_mib=0)
    pol = Marconi()
    simulate(tr, pol, cfg)
    assert pol.tuned_alpha is not None
    # the replays it ran: the requests seen up to the tuning point, from empty servers
    seen = pol._seen[:pol._window]
    sub = sub_trace(tr, seen)
    prof = load_profile()
    best = min((sum(r.prefill_ms for r in simulate(sub, Marconi(alpha=repr(a)), cfg, prof).results), a)
               for a in MARCONI_ALPHAS)
    assert pol.tuned_alpha == best[1]
    assert len(seen) < len(tr)                      # tuned before the end: online, not offline


# --- ik_llama.cpp -------------------------------------------------------------------------------

def test_ik_llama_interval_tolerance_and_end_of_generation():
    pol = make_policy("ik-llama")
    assert pol.place(view(0, 1300)).positions == (512, 1024, 1295)   # 1300 - tolerance 5
    assert pol.after_generation(view(0, 1300), 1600) == (1536, 1600)


def test_ik_llama_variance_eviction_keeps_the_prompt_end():
    pol = make_policy("ik-llama")
    ck = [Checkpoint(100, 1.0, 0), Checkpoint(600, 1.0, 0), Checkpoint(700, 1.0, 1),
          Checkpoint(2000, 1.0, 1)]
    # interior gaps: 600 -> 500 x 100, 700 -> 100 x 1300: removing 600 leaves the least variance
    assert pol.victim(ck, 3000) == 1
    pol.place(view(0, 605, request_id=0))           # request 0's prompt ended at 605 - 5 = 600
    assert pol.victim(ck, 3000) == 2                # 600 is its prompt-end checkpoint: kept


# --- llama.cpp PRs ------------------------------------------------------------------------------

def test_pr25592_and_pr24035_victims():
    ck = [Checkpoint(k, 1.0, 0) for k in (100, 1000, 1100, 5000)]
    # #25592: nearest to a neighbour, the new one (5050) included: 5000 (50 away)
    assert make_policy("pr25592").victim(ck, 5050) == 3
    # #24035: densest interior point, the earliest and the most recent kept: 1000 (gap 1000 left)
    assert make_policy("pr24035").victim(ck, 5050) == 1


@pytest.mark.parametrize("spec", ["pr25592", "pr24035"])
def test_pr_policies_supersede_a_checkpoint_at_the_restored_position(spec):
    # r1 edits r0 at 1100: the exact restore resumes at the user start 1000, and the placement
    # of b11549 (the PRs' placement) checkpoints 1000 again, the last user message. b11549
    # supersedes the old one (#28302); appending a duplicate each request filled the cap and
    # every prompt-cache entry (elided SWE: 187.6 M re-processed instead of the server's 173.2 M).
    tr = Trace(TraceHeader(name="t"), [
        Request(0, "a", 0.0, 3000, 10, -1, 0, user_starts=(1000,)),
        Request(1, "a", 1.0, 3500, 10, 0, 1100, user_starts=(1000,)),
        Request(2, "a", 2.0, 3600, 10, 1, 3509, user_starts=(1000, 3520))])
    seen: dict[int, tuple[int, ...]] = {}
    pol = make_policy(spec)
    place = pol.place

    def recording_place(v):
        seen[v.request_id] = v.ckpt_n_tokens
        return place(v)
    pol.place = recording_place
    run = simulate(tr, pol, CFG)
    assert run.results[1].restored_n_tokens == 1000
    ks = seen[2]
    assert ks.count(1000) == 1 and len(ks) == len(set(ks)), ks


def test_pr24035_checkpoints_the_recovered_prefix():
    plan = make_policy("pr24035").place(view(500, 2000, lcp_n_tokens=800))
    assert 800 in plan.positions
    assert 800 not in make_policy("pr25592").place(view(500, 2000, lcp_n_tokens=800)).positions


def test_pr25472_half_step_floor_for_the_last_user_message():
    # b9985, min step 8192: user starts 3000 and 6000. The server exempts the last user message
    # (6000); the comment's floor needs 6000 > 3000 + 4096: no checkpoint there
    v = view(0, 12000, user_starts=(3000, 6000))
    assert 6000 in make_policy("llama-server:version=b9985").place(v).positions
    assert 6000 not in make_policy("pr25472-half-step").place(v).positions
    assert 9000 in make_policy("pr25472-half-step").place(view(0, 12000, user_starts=(3000, 9000))).positions


# --- the view's prefix facts ---------------------------------------------------------------------

class _Recorder(Policy):
    name = "recorder"

    def __init__(self) -> None:
        self.views: dict[int, PrefillView] = {}

    def place(self, v):
        self.views[v.request_id] = v
        return super().place(v)


def test_view_branch_points_are_online():
    # r0 (session a) and r1 (b) share a 2000-token system prompt; r2 continues a's whole sequence;
    # r3 (c) shares 2500 of r1's 2700 tokens (-np 1 serves in order: r1 has finished)
    tr = trace_of(("a", 3000, 100, -1, 0), ("b", 2600, 100, 0, 2000), ("a", 3500, 50, 0, 3100),
                  ("c", 4000, 10, 1, 2500))
    rec = _Recorder()
    simulate(tr, rec, CFG)
    v = rec.views
    assert (v[0].seen_prefix_n_tokens, v[0].branch_n_tokens) == (0, 0)
    assert (v[1].seen_prefix_n_tokens, v[1].branch_n_tokens) == (2000, 2000)   # leaves r0 at 2000
    assert (v[2].seen_prefix_n_tokens, v[2].branch_n_tokens) == (3100, 0)      # extends r0 whole
    assert (v[3].seen_prefix_n_tokens, v[3].branch_n_tokens) == (2500, 2500)
    assert v[2].lcp_n_tokens == 2000     # the slot held r1, which shares 2000 tokens with r2
