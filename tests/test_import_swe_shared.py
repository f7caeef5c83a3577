"""mini-swe-agent / SWE-agent importers on the real files in ../shared/corpus (skipped when absent)."""
from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

import numpy as np
import pytest

from ckptsim.ingest import swe
from ckptsim.trace import load_trace

pytestmark = pytest.mark.shared

FIXTURES = Path(__file__).parent / "data" / "swe"


@pytest.fixture
def corpus(shared_dir: Path) -> Path:
    return shared_dir / "corpus" / "traces"


def test_fixtures_are_byte_copies_of_the_corpus(corpus: Path):
    sums = dict(line.split()[::-1] for line in
                (corpus / "mini-swe-agent-gemini3pro" / "SHA256SUMS.uncompressed").read_text().splitlines())
    for f in FIXTURES.glob("*.traj.json.xz"):
        assert hashlib.sha256(lzma.open(f).read()).hexdigest() == sums[f.name[:-3]]
    orig = (corpus / "swe-agent-elision" / "marshmallow-code__marshmallow-1867.traj").read_bytes()
    assert lzma.open(FIXTURES / "marshmallow-code__marshmallow-1867.traj.xz").read() == orig


def test_swe_agent_original_file_reproduced_by_the_rule(corpus: Path):
    s = swe.read_swe_agent(corpus / "swe-agent-elision" / "marshmallow-code__marshmallow-1867.traj")
    hist = list(s.history)
    for st in s.steps[1:]:
        assert swe.elide_observations(hist[:len(st.prompt)], 5) == st.prompt


def test_token_counts_vs_provider_on_a_sample(corpus: Path, tmp_path: Path):
    out = tmp_path / "s.jsonl"
    stats = swe.import_trajectories([corpus / "mini-swe-agent-gemini3pro" / "trajs"], out,
                                    swe.ImportOptions(sample=12, seed=1))
    r = np.asarray(stats.ratios)
    # Full-set distribution (docs/swe-traces.md): median 0.942, p1 0.853, p99 1.009, min 0.70, max 1.14.
    assert 0.92 <= np.median(r) <= 0.96
    assert np.mean((r >= 0.80) & (r <= 1.05)) >= 0.95
    assert len(load_trace(out)) == stats.n_requests


@pytest.mark.slow
def test_full_500_session_import(corpus: Path, tmp_path: Path):
    out = tmp_path / "all.jsonl.gz"
    stats = swe.import_trajectories([corpus / "mini-swe-agent-gemini3pro" / "trajs"], out, swe.ImportOptions())
    assert stats.n_sessions == 500 and stats.n_requests == 20163  # PROVENANCE.md counts
    r = np.asarray(stats.ratios)
    assert 0.93 <= np.median(r) <= 0.95
    assert np.percentile(r, 1) >= 0.84 and np.percentile(r, 99) <= 1.02
    t = load_trace(out)
    assert len(set(t.session)) == 500 and np.all(np.diff(t.t_s) >= 0)
