"""Cost model: prefill, decode, checkpoint create/restore times and sizes, from a JSON profile.

Prefill of positions [start, end) costs, per token at position p, ``a + b * p / 1000`` ms
(``a``: weights and recurrent layers, flat in p; ``b``: attention, linear in p), plus ``c`` ms per
llama_decode call (batch) and ``u`` ms per ubatch (one graph compute: every ubatch streams the
weights once, so a small ``-ub`` pays it more often)::

    prefill_ms = a*n + b*n*(start + end - 1)/2000 + c*n_batches + u*n_ubatches,   n = end - start

A checkpoint is a host<->device copy of its bytes (spec §4, #22558): ``fixed + per_mib * size``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

PROFILE_SCHEMA = "ckptsim-profile"
DEFAULT_PROFILE = "qwen35-35b-a3b-pr19970"


@dataclass(frozen=True)
class CostProfile:
    """A fitted or published cost model for one model on one machine."""

    name: str
    prefill_ms_per_token: float
    prefill_ms_per_token_per_ktok: float = 0.0
    prefill_ms_per_batch: float = 0.0
    prefill_ms_per_ubatch: float = 0.0
    decode_ms_per_token: float = 0.0
    decode_ms_per_token_per_ktok: float = 0.0
    ckpt_size_mib: float = 0.0
    ckpt_size_mib_per_ktok: float = 0.0     # > 0 when a draft/SWA part grows with the position
    restore_ms_fixed: float = 0.0
    restore_ms_per_mib: float = 0.0
    create_ms_fixed: float = 0.0
    create_ms_per_mib: float = 0.0
    kv_mib_per_ktok: float = 0.0            # attention KV per 1000 cached tokens (prompt-cache entries)
    provenance: dict = field(default_factory=dict)

    def prefill_ms(self, start: int, end: int, n_batches: int, n_ubatches: int) -> float:
        """Time to prefill positions [start, end) in ``n_batches`` decode calls of ``n_ubatches`` ubatches."""
        n = end - start
        if n <= 0:
            return 0.0
        return (self.prefill_ms_per_token * n
                + self.prefill_ms_per_token_per_ktok * n * (start + end - 1) / 2000.0
                + self.prefill_ms_per_batch * n_batches + self.prefill_ms_per_ubatch * n_ubatches)

    def decode_ms(self, start: int, n_tokens: int) -> float:
        """Time to generate ``n_tokens`` tokens after ``start`` cached tokens."""
        if n_tokens <= 0:
            return 0.0
        return (self.decode_ms_per_token * n_tokens
                + self.decode_ms_per_token_per_ktok * n_tokens * (2 * start + n_tokens - 1) / 2000.0)

    def ckpt_mib(self, n_tokens: int) -> float:
        """Size of a checkpoint taken after ``n_tokens`` tokens."""
        return self.ckpt_size_mib + self.ckpt_size_mib_per_ktok * n_tokens / 1000.0

    def restore_ms(self, size_mib: float) -> float:
        """Time to copy a checkpoint of ``size_mib`` back into the model's memory."""
        return self.restore_ms_fixed + self.restore_ms_per_mib * size_mib

    def create_ms(self, size_mib: float) -> float:
        """Time to copy the state out into a new checkpoint."""
        return self.create_ms_fixed + self.create_ms_per_mib * size_mib

    def state_mib(self, n_tokens: int) -> float:
        """Full sequence state (attention KV + recurrent) as saved to the prompt cache."""
        return self.kv_mib_per_ktok * n_tokens / 1000.0 + self.ckpt_mib(n_tokens)

    def to_json(self) -> dict:
        """The profile as written to a JSON file."""
        d = asdict(self)
        d["schema"] = PROFILE_SCHEMA
        return d


def profile_from_json(d: dict, where: str = "profile") -> CostProfile:
    """Build a profile from its JSON object; unknown or missing fields are errors."""
    if not isinstance(d, dict) or d.get("schema") != PROFILE_SCHEMA:
        raise ValueError(f"{where}: not a ckptsim cost profile (expected \"schema\": \"{PROFILE_SCHEMA}\")")
    names = {f.name for f in fields(CostProfile)}
    extra = set(d) - names - {"schema"}
    if extra:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
    kwargs = {k: v for k, v in d.items() if k in names}
    for k, v in kwargs.items():
        if k not in ("name", "provenance") and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{where}: field '{k}' must be a non-negative number, got {v!r}")
    if "name" not in kwargs or "prefill_ms_per_token" not in kwargs:
        raise ValueError(f"{where}: a profile needs at least 'name' and 'prefill_ms_per_token'")
    return CostProfile(**kwargs)


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in the package."""
    root = resources.files("ckptsim") / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | None = None) -> CostProfile:
    """A shipped profile by name, or a profile JSON file by path."""
    name_or_path = name_or_path or DEFAULT_PROFILE
    p = Path(name_or_path)
    res = resources.files("ckptsim") / "profiles" / f"{name_or_path}.json"
    if p.suffix != ".json" and "/" not in name_or_path and os.sep not in name_or_path \
            and not p.exists():
        if not res.is_file():
            raise ValueError(f"unknown profile {name_or_path!r}: not a file, and not one of "
                             f"{', '.join(builtin_profiles())}")
        return profile_from_json(json.loads(res.read_text()), name_or_path)
    # A path: say why the file cannot be used rather than "unknown profile".
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ValueError(f"profile file {p} cannot be read: no such file (shipped profiles: "
                         f"{', '.join(builtin_profiles())})") from None
    except IsADirectoryError:
        raise ValueError(f"profile file {p} cannot be read: it is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"profile file {p} cannot be read: "
                         f"{getattr(e, 'strerror', None) or 'not a text file'}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"profile file {p}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"profile file {p}: expected a JSON object")
    return profile_from_json(doc, str(p))
