"""Import Mooncake (FAST'25) request traces as a ckptsim trace.

Source format (docs/real-traces.md): JSON Lines, one request per line with ``timestamp``
(milliseconds), ``input_length``, ``output_length`` and ``hash_ids`` (one id per 512-token block
of the input, the last one covering the partial block; equal ids = equal prefix).

Mooncake has no sessions and no turn boundaries. The importer derives them:
- parent: the earlier prompt sharing the most blocks (:class:`~ckptsim.ingest.blockhash.BlockIndex`),
  tokens shared by the partial-block rule;
- session: a request that *continues* its parent (shares every full block of the parent's
  prompt, i.e. the parent's prompt is its prefix up to the blurred tail) joins the parent's
  session; any other request starts a new session ``mc-<id>``. Sharing only a system prompt
  does not make two requests one conversation;
- user turns: the new input of every request is taken as one user message starting at the end
  of the shared prefix (the traces are chat turns); a first prompt gets none.

Streaming: lines are read one at a time; the index keeps only block hashes and prompt lengths.
"""
from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..records import Request
from ..trace import TraceError, TraceHeader, TraceWriter
from .blockhash import BlockIndex, PartialBlockRule

SOURCE = "mooncake"


class MooncakeFormatError(TraceError):
    """A line that is not a Mooncake request; the message names file and line."""


@dataclass(frozen=True)
class MooncakeOptions:
    """Choices made while importing (stored in the trace header)."""

    partial_block: PartialBlockRule = PartialBlockRule.APPEND
    block_size: int = 512
    limit: int = 0            # import only the first N requests (0: all)


@dataclass
class MooncakeStats:
    """What an import read and derived (printed by the CLI)."""

    n_requests: int = 0
    n_sessions: int = 0
    n_roots: int = 0
    n_continuations: int = 0
    n_append_rule: int = 0
    n_append_tokens: int = 0
    n_prompt_tokens: int = 0
    n_shared_tokens: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict:
        """Plain dict for --json output."""
        return asdict(self)


def _int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _parse(line: str, where: str, block_size: int) -> tuple[float, int, int, list]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise MooncakeFormatError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(rec, dict):
        raise MooncakeFormatError(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
    if "requests" in rec:
        raise MooncakeFormatError(f"{where}: this is a kv-cache-tester conversation, not a Mooncake "
                                  "request; use `ckptsim import weka`")
    missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in rec]
    if missing:
        raise MooncakeFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    ts, n_in, n_out, hashes = rec["timestamp"], rec["input_length"], rec["output_length"], rec["hash_ids"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts or ts < 0:
        raise MooncakeFormatError(f"{where}: field 'timestamp' must be non-negative milliseconds, got {ts!r}")
    if not _int(n_in, 1):
        raise MooncakeFormatError(f"{where}: field 'input_length' must be a positive integer, got {n_in!r}")
    if not _int(n_out, 0):
        raise MooncakeFormatError(f"{where}: field 'output_length' must be a non-negative integer, "
                                  f"got {n_out!r}")
    if not isinstance(hashes, list) or any(isinstance(h, bool) or not isinstance(h, (int, str)) for h in hashes):
        raise MooncakeFormatError(f"{where}: field 'hash_ids' must be a list of integers")
    if len(hashes) > -(-n_in // block_size):
        raise MooncakeFormatError(f"{where}: {len(hashes)} hash_ids for {n_in} input tokens is more than "
                                  f"one per {block_size}-token block (wrong --block-size?)")
    return float(ts) / 1000.0, n_in, n_out, hashes


def header_for(path: Path, opts: MooncakeOptions, name: str = "") -> TraceHeader:
    """The trace header an import writes."""
    return TraceHeader(
        name=name or path.name.split(".")[0], source=SOURCE,
        tokenizer=f"unknown ({opts.block_size}-token block hashes)", derived=True,
        notes=("Imported from a Mooncake trace; parents and sessions derived from block hashes "
               f"(partial-block rule: {opts.partial_block.value}); see docs/real-traces.md"),
        meta={"importer": "ckptsim.ingest.mooncake", "partial_block": opts.partial_block.value,
              "block_size": opts.block_size, "limit": opts.limit, "file": path.name})


def import_mooncake(path: str | os.PathLike, out_path: str | os.PathLike,
                    opts: MooncakeOptions = MooncakeOptions(), overwrite: bool = False, name: str = "",
                    on_line: Callable[[int], None] | None = None) -> MooncakeStats:
    """Import one Mooncake JSONL file (``.gz`` too) into a ckptsim trace, streaming; returns stats."""
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file")
    if src.is_dir():
        raise IsADirectoryError(f"{src}: is a directory; give the .jsonl file")
    if opts.block_size < 1:
        raise ValueError(f"block size must be positive, got {opts.block_size}")
    stats = MooncakeStats()
    index = BlockIndex(opts.block_size, opts.partial_block)
    sessions: list[str] = []
    users: list[tuple[int, ...]] = []
    t0_s = None
    last_s = 0.0
    opener = gzip.open if src.name.endswith(".gz") else open
    with TraceWriter(out_path, header_for(src, opts, name), overwrite=overwrite) as w, \
            opener(src, "rt", encoding="utf-8") as f:
        line_no = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise MooncakeFormatError(f"{src}:{line_no + 1}: not UTF-8 text") from None
            if not line:
                break
            line_no += 1
            if not line.strip():
                continue
            where = f"{src}:{line_no}"
            t_s, n_in, n_out, hashes = _parse(line, where, opts.block_size)
            if t0_s is None:
                t0_s = t_s
            if t_s < last_s:
                raise MooncakeFormatError(f"{where}: timestamp {t_s * 1000:g} ms is earlier than the line "
                                          "before; Mooncake traces are in arrival order")
            last_s = t_s
            rid = w.n_written
            m = index.insert(rid, hashes, n_in)
            parent, n_shared = m.parent, m.n_shared
            user: tuple[int, ...] = ()
            if parent >= 0:
                if n_shared > m.n_strict:
                    stats.n_append_rule += 1
                    stats.n_append_tokens += n_shared - m.n_strict
                session = sessions[parent] if m.continues else f"mc-{rid}"
                stats.n_continuations += m.continues
                user = tuple(x for x in users[parent] if x < n_shared)
                if n_shared < n_in:
                    user += (n_shared,)
            else:
                stats.n_roots += 1
                session = f"mc-{rid}"
            if session == f"mc-{rid}":
                stats.n_sessions += 1
            w.write(Request(id=rid, session=session, t_s=t_s - t0_s, n_prompt=n_in, n_output=n_out,
                            parent=parent, n_shared=n_shared, user_starts=user))
            sessions.append(session)
            users.append(user)
            stats.n_requests += 1
            stats.n_prompt_tokens += n_in
            stats.n_shared_tokens += n_shared
            stats.duration_s = t_s - t0_s
            if on_line:
                on_line(line_no)
            if opts.limit and stats.n_requests >= opts.limit:
                break
        if stats.n_requests == 0:
            raise MooncakeFormatError(f"{src}: no requests")   # leaves no output file behind
    return stats
