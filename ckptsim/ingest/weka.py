"""Import kv-cache-tester agentic coding traces (Claude Code sessions, "Weka" traces) as a ckptsim trace.

Source format (docs/real-traces.md): one JSON object per conversation with ``block_size`` (64),
``hash_id_scope``, ``system_tokens``, ``tool_tokens`` and ``requests``. A request has ``t``
(seconds since its conversation started), ``in``/``out`` (prompt/output tokens), ``hash_ids``
(one id per *full* 64-token block of the prompt), ``input_types`` (what the new input is) and
``type`` (``n``/``s``; ``subagent`` for a nested conversation whose own ``t`` are relative to its
start ``t`` on the parent's clock).

What the importer decides (each choice is an option or documented):
- sessions: the conversation id, and ``<id>/sub-<k>`` for its k-th sub-agent (nested: a path);
- arrival: conversation start + (sub-agent starts +) ``t``; conversations ``sequential`` (one
  after another, ``gap_s`` apart) or ``concurrent`` (all from 0);
- prefix structure: best parent by block hashes within the conversation (hash ids are local to a
  file unless ``hash_id_scope`` is ``global``), tokens shared by :mod:`ckptsim.ingest.blockhash`
  with its partial-block rule;
- user turns: a request whose new input includes ``text`` starts a user turn at the end of the
  shared prefix (for a first prompt: after the system prompt and tool definitions); ``tool_result``
  marks a tool output there the same way;
- older files (before the v8 set) sent every turn twice, streaming then non-streaming, with the
  same hashes; ``pairs="merge"`` keeps one request per turn.

Streaming: one conversation (one file) is parsed at a time; requests are written as they are made.
"""
from __future__ import annotations

import gzip
import heapq
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ..records import Request
from ..trace import TraceError, TraceHeader, TraceWriter
from .blockhash import BlockIndex, PartialBlockRule

SOURCE = "kv-cache-tester"
_REQUEST_TYPES = {"n", "s", "?"}   # "?" appears in the older paired files


class Placement(str, Enum):
    """Where each conversation of one import starts on the trace's clock."""

    SEQUENTIAL = "sequential"   # one after another, gap_s after the previous one's last response
    CONCURRENT = "concurrent"   # every conversation starts at t = 0


class Pairs(str, Enum):
    """What to do with the streaming + non-streaming duplicate of a turn (older files)."""

    MERGE = "merge"   # one request per turn
    KEEP = "keep"     # both, as recorded (the second then finds its whole prompt cached)


@dataclass(frozen=True)
class WekaOptions:
    """Choices made while importing (stored in the trace header)."""

    partial_block: PartialBlockRule = PartialBlockRule.APPEND
    placement: Placement = Placement.SEQUENTIAL
    gap_s: float = 60.0
    pairs: Pairs = Pairs.MERGE


@dataclass
class ImportStats:
    """What an import read and what its rules changed (printed by the CLI)."""

    n_files: int = 0
    n_conversations: int = 0
    n_sessions: int = 0
    n_subagents: int = 0
    n_requests: int = 0
    n_prompt_tokens: int = 0
    n_shared_tokens: int = 0
    n_roots: int = 0                 # requests with no earlier prompt sharing a block
    n_append_rule: int = 0           # requests whose n_shared the partial-block rule extended
    n_append_tokens: int = 0         # tokens that rule added in total
    n_tail_changed: int = 0          # parent shares all but its last full block (kept at block level)
    n_pairs_merged: int = 0
    n_user_turns: int = 0
    duration_s: float = 0.0
    schemas: dict = field(default_factory=dict)   # schema name -> number of files

    def to_json(self) -> dict:
        """Plain dict for --json output."""
        return asdict(self)


_HASH_TYPES = {int, str}      # not bool (a subclass of int: type() tells them apart)


class WekaFormatError(TraceError):
    """A source file that is not a readable kv-cache-tester trace; names file and record."""


@dataclass(frozen=True, slots=True)
class _Raw:
    """One request of a conversation, flattened, before prefix analysis."""

    t_s: float
    order: int               # file order (depth-first); breaks ties in t
    session: str
    n_prompt: int
    n_output: int
    hashes: list
    input_types: tuple[str, ...]
    kind: str
    end_s: float             # t + api_time when known: when the response was complete
    n_preamble: int          # system + tool tokens of its agent: where the first user text starts


@dataclass(frozen=True, slots=True)
class _Out:
    """One imported request of a conversation (parent: id_base + index, or -1)."""

    t_s: float
    session: str
    n_prompt: int
    n_output: int
    parent: int
    n_shared: int
    user: tuple[int, ...]
    tool: tuple[int, ...]


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to import: each path itself, or a directory's ``*.json``/``*.json.gz`` sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir()
                           if q.is_file() and (q.name.endswith(".json") or q.name.endswith(".json.gz")))
            if not found:
                raise WekaFormatError(f"{p}: directory has no *.json trace files")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def _load_json(path: Path) -> object:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise WekaFormatError(f"{path}: not UTF-8 text; expected a kv-cache-tester JSON trace") from None
    except (OSError, EOFError) as e:
        raise WekaFormatError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        first = text.lstrip()[:1]
        if first == "{" and "\n{" in text.strip():
            hint = " (one JSON object per line? Mooncake files are imported with `ckptsim import mooncake`)"
        raise WekaFormatError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg}){hint}") \
            from None


def _int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v >= 0


def detect_schema(doc: object, path: Path) -> str:
    """Name of the kv-cache-tester schema a decoded file uses, or a WekaFormatError saying why none."""
    if isinstance(doc, list):
        raise WekaFormatError(f"{path}: top level is a JSON list; expected one conversation object "
                              "with a 'requests' list (kv-cache-tester trace)")
    if not isinstance(doc, dict):
        raise WekaFormatError(f"{path}: top level is not a JSON object")
    if "requests" not in doc:
        if {"timestamp", "input_length", "hash_ids"} <= set(doc):
            raise WekaFormatError(f"{path}: this is a Mooncake request, not a kv-cache-tester "
                                  "conversation; use `ckptsim import mooncake`")
        raise WekaFormatError(f"{path}: no 'requests' list; not a kv-cache-tester trace "
                              f"(top-level keys: {', '.join(sorted(map(str, doc))[:8])})")
    if not isinstance(doc["requests"], list):
        raise WekaFormatError(f"{path}: 'requests' must be a list")
    # v8 (2026-04) added hash_id_scope and dropped the streaming/non-streaming duplicate pairs.
    return "v8" if "hash_id_scope" in doc else "paired"


def _flatten(doc: dict, path: Path, session: str) -> list[_Raw]:
    """All requests of one conversation with absolute (conversation-relative) times."""
    out: list[_Raw] = []
    counter = [0]

    def preamble(obj: dict) -> int:
        s, t = obj.get("system_tokens", 0), obj.get("tool_tokens", 0)
        return (s if _int(s, 0) else 0) + (t if _int(t, 0) else 0)

    def walk(reqs: list, base_s: float, sess: str, where: str, n_pre: int) -> None:
        n_sub = 0
        for i, r in enumerate(reqs):
            counter[0] += 1
            loc = f"{path}: record {counter[0]} ({where}[{i}])"
            if not isinstance(r, dict):
                raise WekaFormatError(f"{loc}: expected a JSON object, got {type(r).__name__}")
            kind = r.get("type", "n")
            t = r.get("t")
            if t is None:
                raise WekaFormatError(f"{loc}: missing field 't'")
            if not _num(t):
                raise WekaFormatError(f"{loc}: field 't' must be a non-negative number of seconds, got {t!r}")
            if kind == "subagent":
                sub = r.get("requests")
                if not isinstance(sub, list):
                    raise WekaFormatError(f"{loc}: sub-agent without a 'requests' list")
                n_sub += 1
                walk(sub, base_s + float(t), f"{sess}/sub-{n_sub}", f"{where}[{i}].requests",
                     preamble(r) or n_pre)
                continue
            if kind not in _REQUEST_TYPES:
                raise WekaFormatError(f"{loc}: unknown request type {kind!r} (known: n, s, subagent)")
            for key in ("in", "out", "hash_ids"):
                if key not in r:
                    raise WekaFormatError(f"{loc}: missing field '{key}'")
            n_in, n_out, hashes = r["in"], r["out"], r["hash_ids"]
            if not _int(n_in, 1):
                raise WekaFormatError(f"{loc}: field 'in' must be a positive integer, got {n_in!r}")
            if not _int(n_out, 0):
                raise WekaFormatError(f"{loc}: field 'out' must be a non-negative integer, got {n_out!r}")
            # the types as a set (in C): a Python test per id cost half of a corpus import
            if not isinstance(hashes, list) or not set(map(type, hashes)) <= _HASH_TYPES:
                raise WekaFormatError(f"{loc}: field 'hash_ids' must be a list of integers")
            types = r.get("input_types", [])
            if not isinstance(types, list) or not all(isinstance(x, str) for x in types):
                raise WekaFormatError(f"{loc}: field 'input_types' must be a list of strings")
            api = r.get("api_time")
            end = float(t) + (float(api) if _num(api) else 0.0)
            out.append(_Raw(t_s=base_s + float(t), order=counter[0], session=sess, n_prompt=n_in,
                            n_output=n_out, hashes=hashes, input_types=tuple(types), kind=str(kind),
                            end_s=base_s + end, n_preamble=n_pre))

    walk(doc["requests"], 0.0, session, "requests", preamble(doc))
    return out


def _merge_pairs(raws: list[_Raw]) -> tuple[list[_Raw], int]:
    """Fold each duplicate (same session, prompt and hashes as the request just before) into it."""
    last: dict[str, int] = {}
    keep: list[_Raw | None] = []
    merged = 0
    for r in raws:
        j = last.get(r.session)
        prev = keep[j] if j is not None else None
        if prev is not None and prev.kind == "s" and r.kind != "s" and prev.n_prompt == r.n_prompt \
                and prev.hashes == r.hashes:
            # The proxy sent the turn twice; the second (non-streaming) answer is the one whose
            # tool calls the conversation continued from, the first carries the new input's types.
            keep[j] = _Raw(t_s=prev.t_s, order=prev.order, session=prev.session, n_prompt=prev.n_prompt,
                           n_output=r.n_output, hashes=prev.hashes,
                           input_types=prev.input_types + tuple(x for x in r.input_types
                                                                if x not in prev.input_types),
                           kind="n", end_s=max(prev.end_s, r.end_s), n_preamble=prev.n_preamble)
            merged += 1
            continue
        last[r.session] = len(keep)
        keep.append(r)
    return [r for r in keep if r is not None], merged


def conversation_requests(path: Path, opts: WekaOptions, stats: ImportStats,
                          global_index: BlockIndex | None = None, id_base: int = 0) -> tuple[list[_Out], float]:
    """Import one conversation file: its requests in arrival order and its end time (seconds).

    Parents are ids ``id_base + i`` of the i-th request of this conversation, or ids of earlier
    files' requests when the file's hash ids are global (``hash_id_scope: global``) and
    ``global_index`` holds those files; -1 when a request shares no block with an earlier one.
    User/tool positions come back whole for parents in this file, new ones only otherwise.
    """
    doc = _load_json(path)
    schema = detect_schema(doc, path)
    assert isinstance(doc, dict)
    stats.schemas[schema] = stats.schemas.get(schema, 0) + 1
    block_size = doc.get("block_size", 64)
    if not _int(block_size, 1):
        raise WekaFormatError(f"{path}: 'block_size' must be a positive integer, got {block_size!r}")
    scope = doc.get("hash_id_scope", "local")
    name = doc.get("id")
    session = str(name) if isinstance(name, (str, int)) and str(name) else path.name.split(".")[0]
    raws = _flatten(doc, path, session)
    del doc
    for r in raws:
        if len(r.hashes) > -(-r.n_prompt // block_size):
            raise WekaFormatError(f"{path}: record {r.order}: {len(r.hashes)} hash_ids for a {r.n_prompt}-token "
                                  f"prompt is more than one per {block_size}-token block")
    raws.sort(key=lambda r: (r.t_s, r.order))
    if opts.pairs is Pairs.MERGE:
        raws, merged = _merge_pairs(raws)
        stats.n_pairs_merged += merged
    if scope == "global":
        if global_index is None:
            raise WekaFormatError(f"{path}: hash_id_scope 'global' links conversations; import it with "
                                  "--placement sequential")
        if global_index.block_size != block_size:
            raise WekaFormatError(f"{path}: block_size {block_size} differs from the earlier files' "
                                  f"{global_index.block_size} (global hash ids need one block size)")
        index = global_index
    else:
        # Local hash ids mean nothing outside their file: a fresh index per conversation.
        index = BlockIndex(block_size, opts.partial_block)
    sessions = {r.session for r in raws}
    stats.n_conversations += 1
    stats.n_sessions += len(sessions)
    stats.n_subagents += len(sessions) - 1
    out: list[_Out] = []
    end_s = 0.0
    for i, r in enumerate(raws):
        m = index.insert(id_base + i, r.hashes, r.n_prompt)
        parent, n_shared = m.parent, m.n_shared
        user: tuple[int, ...] = ()
        tool: tuple[int, ...] = ()
        if parent >= 0:
            if n_shared > m.n_strict:
                stats.n_append_rule += 1
                stats.n_append_tokens += n_shared - m.n_strict
            elif m.n_blocks == index.n_prompt(parent) // block_size - 1:
                stats.n_tail_changed += 1
            if parent >= id_base:
                p = out[parent - id_base]
                user = tuple(x for x in p.user if x < n_shared)
                tool = tuple(x for x in p.tool if x < n_shared)
            new_at = n_shared
        else:
            stats.n_roots += 1
            # A first prompt starts with the agent's system prompt and tool definitions.
            new_at = r.n_preamble if r.n_preamble < r.n_prompt else 0
        if new_at < r.n_prompt:
            if "text" in r.input_types:
                user += (new_at,)
                stats.n_user_turns += 1
            if "tool_result" in r.input_types:
                tool += (new_at,)
        out.append(_Out(t_s=r.t_s, session=r.session, n_prompt=r.n_prompt, n_output=r.n_output,
                        parent=parent, n_shared=n_shared, user=user, tool=tool))
        end_s = max(end_s, r.end_s)
        stats.n_requests += 1
        stats.n_prompt_tokens += r.n_prompt
        stats.n_shared_tokens += n_shared
    return out, end_s


def header_for(paths: Sequence[Path], opts: WekaOptions, name: str = "") -> TraceHeader:
    """The trace header an import writes (options and input files in ``meta``)."""
    return TraceHeader(
        name=name or (paths[0].parent.name if len(paths) > 1 else paths[0].name.split(".")[0]),
        source=SOURCE, tokenizer="claude (64-token block hashes)", derived=True,
        notes=("Imported from kv-cache-tester traces; token-level prefixes inferred from block hashes "
               f"(partial-block rule: {opts.partial_block.value}); see docs/real-traces.md"),
        meta={"importer": "ckptsim.ingest.weka", "partial_block": opts.partial_block.value,
              "placement": opts.placement.value, "gap_s": opts.gap_s, "pairs": opts.pairs.value,
              "files": [p.name for p in paths]})


def import_weka(paths: Iterable[str | os.PathLike], out_path: str | os.PathLike,
                opts: WekaOptions = WekaOptions(), overwrite: bool = False, name: str = "",
                on_file: Callable[[Path], None] | None = None) -> ImportStats:
    """Import kv-cache-tester conversation files into one ckptsim trace, streaming; returns stats."""
    files = expand_paths(paths)
    if not files:
        raise WekaFormatError("no input files")
    stats = ImportStats(n_files=len(files))
    with TraceWriter(out_path, header_for(files, opts, name), overwrite=overwrite) as w:
        if opts.placement is Placement.SEQUENTIAL:
            _write_sequential(files, opts, stats, w, on_file)
        else:
            _write_concurrent(files, opts, stats, w, on_file)
    return stats


def _write_sequential(files: list[Path], opts: WekaOptions, stats: ImportStats, w: TraceWriter,
                      on_file: Callable[[Path], None] | None) -> None:
    offset_s = 0.0
    global_index = BlockIndex(64, opts.partial_block)
    # Only for files with global hash ids: positions of every request, to inherit across files.
    positions: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for path in files:
        base = w.n_written
        reqs, end_s = conversation_requests(path, opts, stats, global_index, id_base=base)
        for i, r in enumerate(reqs):
            user, tool = r.user, r.tool
            if 0 <= r.parent < base:   # a parent in an earlier file (global hash ids)
                pu, pt = positions[r.parent]
                user = tuple(x for x in pu if x < r.n_shared) + user
                tool = tuple(x for x in pt if x < r.n_shared) + tool
            w.write(Request(id=base + i, session=r.session, t_s=offset_s + r.t_s, n_prompt=r.n_prompt,
                            n_output=r.n_output, parent=r.parent, n_shared=r.n_shared,
                            user_starts=user, tool_starts=tool))
            if global_index.n_indexed:
                positions[base + i] = (user, tool)
        stats.duration_s = max(stats.duration_s, offset_s + end_s)
        offset_s += end_s + opts.gap_s
        if on_file:
            on_file(path)


def _write_concurrent(files: list[Path], opts: WekaOptions, stats: ImportStats, w: TraceWriter,
                      on_file: Callable[[Path], None] | None) -> None:
    # Every conversation starts at 0, so arrivals interleave across files. Each conversation is
    # analysed alone (one file in memory), spilled to a temporary JSONL file, then the files are
    # merged by arrival time; only one pending record per conversation is held while merging.
    with tempfile.TemporaryDirectory(prefix="ckptsim-weka-") as tmp:
        spills: list[Path] = []
        for k, path in enumerate(files):
            reqs, end_s = conversation_requests(path, opts, stats)
            stats.duration_s = max(stats.duration_s, end_s)
            sp = Path(tmp) / f"{k:06d}.jsonl"
            with open(sp, "w", encoding="utf-8") as f:
                for r in reqs:
                    f.write(json.dumps([r.t_s, r.session, r.n_prompt, r.n_output, r.parent, r.n_shared,
                                        list(r.user), list(r.tool)]) + "\n")
            spills.append(sp)
            if on_file:
                on_file(path)
        local_to_global: list[list[int]] = [[] for _ in spills]

        def stream(k: int, sp: Path) -> Iterator[tuple[float, int, int, list]]:
            with open(sp, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    rec = json.loads(line)
                    yield rec[0], k, i, rec

        # Ties in time keep file order, then conversation order, so a parent always comes first.
        for _t, k, _i, rec in heapq.merge(*(stream(k, sp) for k, sp in enumerate(spills))):
            t_s, session, n_prompt, n_output, parent, n_shared, user, tool = rec
            gid = w.n_written
            local_to_global[k].append(gid)
            w.write(Request(id=gid, session=session, t_s=t_s, n_prompt=n_prompt, n_output=n_output,
                            parent=local_to_global[k][parent] if parent >= 0 else -1,
                            n_shared=n_shared, user_starts=tuple(user), tool_starts=tuple(tool)))
