"""The prompt cache's index (sim._PromptCache) chooses exactly what the server's scan chooses.

``_Scan`` below is the server's loop as written in the spec (§5): one common-prefix query per
entry on save and on load, the first best entry winning ties. Swapped in for the index, every
run must give the same events and results, ties and all.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings

from ckptsim import sim
from ckptsim.records import EventKind, Request
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import Trace, TraceHeader, load_trace
from strategies import materialise, token_lcp, traces


class _Scan(sim._PromptCache):
    """The reference: a list of entries scanned in full (the server's own loops)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entries = []

    def _changed(self) -> None:
        self._size_mib = sum(e.size_mib for e in self.entries)
        self._n_tokens = sum(e.n_tokens for e in self.entries)
        self._dirty = True

    def _evict_oldest(self, emit) -> None:
        old = self.entries.pop(0)
        self.n_evicted += 1
        self._changed()
        emit(EventKind.CACHE_EVICT, old.n_tokens, old.size_mib)

    def _lcp(self, a: int, n_a: int, b: int, n_b: int) -> int:
        return 0 if a < 0 or b < 0 else min(self.trace.seq_lcp(a, b), n_a, n_b)

    def save(self, slot, emit) -> None:
        if slot.n_cache <= 0:
            return
        lcps = [self._lcp(e.seq, e.n_tokens, slot.seq, slot.n_cache) for e in self.entries]
        if slot.n_cache in lcps:
            return
        size = self.profile.state_mib(slot.n_cache) + slot.ckpt_mib
        if self.makes_room and size > self.limit_mib:
            return
        self.entries = [e for e, lcp in zip(self.entries, lcps) if lcp != e.n_tokens]
        self._changed()
        while self.makes_room and self.entries and self.size_mib + size > self.limit_mib:
            self._evict_oldest(emit)
        self.entries.append(sim._CacheEntry(slot.seq, slot.n_cache, list(slot.ckpts), size))
        self._changed()
        emit(EventKind.CACHE_SAVE, slot.n_cache, size)

    def load(self, slot, req, n_prompt, emit) -> None:
        lcp = self.trace.prefix_with_state(slot.seq, slot.n_cache, req)
        best_keep = lcp / slot.n_cache if slot.n_cache > 0 else -1.0
        best_sim = lcp / n_prompt
        best = -1
        for i, e in enumerate(self.entries):
            l_e = self.trace.prefix_with_state(e.seq, e.n_tokens, req)
            f_keep, f_sim = l_e / e.n_tokens, l_e / n_prompt
            if f_keep >= 0.25 and f_keep > best_keep and f_sim > best_sim:
                best, best_keep, best_sim = i, f_keep, f_sim
        if best >= 0:
            e = self.entries.pop(best)
            self._changed()
            slot.seq, slot.n_cache, slot.ckpts = e.seq, e.n_tokens, list(e.ckpts)
            self.n_loads += 1
            emit(EventKind.CACHE_LOAD, e.n_tokens, e.size_mib)
            return True
        return False


def _both(trace: Trace, spec: str, cfg: ServerConfig, monkeypatch) -> tuple:
    fast = simulate(trace, spec, cfg, None)
    with monkeypatch.context() as m:
        m.setattr(sim, "_PromptCache", _Scan)
        slow = simulate(trace, spec, cfg, None)
    return fast, slow


def _same(a, b) -> None:
    assert list(a.events) == list(b.events)
    assert list(a.results) == list(b.results)
    assert a.summary() == b.summary()


CONFIGS = [ServerConfig(n_slots=4, cache_ram_mib=512), ServerConfig(n_slots=3, kv_unified=False, cache_ram_mib=300),
           ServerConfig(n_slots=2, arrival_order=False, cache_ram_mib=-1), ServerConfig(cache_ram_mib=64)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["np4", "np3-kvu0", "np2-ready-unl", "np1-64"])
def test_index_matches_the_scan_on_bundled_traces(cfg, monkeypatch):
    tr = load_trace(Path(__file__).resolve().parents[1] / "traces" / "multi-session.jsonl")
    for spec in ("llama-server", "fifo", "llama-server:version=b8300"):
        _same(*_both(tr, spec, cfg, monkeypatch))


def _ties_trace(seed: int) -> Trace:
    """Many sessions sharing one system prompt, short prompts and equal lengths: entries that tie
    on f_keep and f_sim, several entries of one sequence, entries that are prefixes of others."""
    rnd = random.Random(seed)
    reqs: list[Request] = []
    last: dict[int, int] = {}
    for i in range(160):
        s = rnd.randrange(6)
        n_prompt = rnd.choice((400, 800, 1200, 1600))
        parent, shared = -1, 0
        if i:
            parent = last.get(s, rnd.randrange(i)) if rnd.random() < 0.8 else rnd.randrange(i)
            p = reqs[parent]
            shared = min(n_prompt, rnd.choice((200, 400, p.n_prompt, p.n_seq)), p.n_seq)
        reqs.append(Request(i, f"s{s}", i * 0.5, n_prompt, rnd.choice((0, 1, 200)), parent, shared))
        last[s] = i
    return Trace(TraceHeader(name="ties"), reqs)


@pytest.mark.parametrize("seed", range(4))
def test_index_matches_the_scan_on_ties(seed, monkeypatch):
    tr = _ties_trace(seed)
    for cfg in CONFIGS:
        _same(*_both(tr, "llama-server", cfg, monkeypatch))


@settings(max_examples=60, deadline=None)
@given(traces(max_requests=14, max_len=4000, n_sessions=4))
def test_index_matches_the_scan_property(trace):
    with pytest.MonkeyPatch.context() as mp:
        for cfg in CONFIGS[:2]:
            _same(*_both(trace, "llama-server", cfg, mp))


@settings(max_examples=60, deadline=None)
@given(traces(max_requests=30, max_len=50, n_sessions=3))
def test_trie_order_gives_every_common_prefix(trace):
    """Trace.trie answers LCP(a, b) for every pair, and the common prefix with a fixed sequence
    only falls walking away from it in trie order (what the index relies on)."""
    seqs = materialise(trace)
    trie = trace.trie
    n = len(trace)
    order = sorted(range(n), key=lambda r: trie.pos[r])
    for a in range(n):
        for b in range(n):
            if a != b:
                assert trie.lcp(a, b) == token_lcp(seqs[a], seqs[b])
        i = trie.pos[a]
        for step in (-1, 1):
            prev = 1 << 62
            j = i + step
            while 0 <= j < n:
                cur = token_lcp(seqs[a], seqs[order[j]])
                assert cur <= prev
                prev = cur
                j += step
