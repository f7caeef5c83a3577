"""Trace: the JSONL file format (schema in traces/README.md), loading with validation, prefix queries.

A trace never stores tokens. Each request names the earlier sequence it shares the most with
(``parent``) and how many tokens (``n_shared``). Because ``parent`` is the *best* earlier match,
the common prefix of any two sequences follows from the parent chain (a trie in disguise)::

    LCP(x, z) = min(LCP(x, parent(x)), LCP(parent(x), z))       for z earlier than x

The sequence of request r is its prompt followed by its output; output tokens are assumed new
(never shared with an earlier sequence).
"""
from __future__ import annotations

import gzip
import io
import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .records import Request

SCHEMA = "ckptsim-trace"
SCHEMA_VERSION = 1
_REQUIRED = ("id", "session", "t", "n_prompt", "n_output")
_KNOWN = set(_REQUIRED) | {"parent", "n_shared", "user", "tool", "user_all", "tool_all", "obs"}


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class TraceHeader:
    """First line of a trace file: where the trace came from and how it was made."""

    name: str = ""
    source: str = ""
    tokenizer: str = ""
    derived: bool = False
    notes: str = ""
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The header as written to the first line of the file."""
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "name": self.name, "source": self.source,
                "tokenizer": self.tokenizer, "derived": self.derived, "notes": self.notes,
                "meta": self.meta}


class Trace:
    """A loaded trace: columns in numpy arrays, user-turn positions per request."""

    def __init__(self, header: TraceHeader, requests: Iterable[Request], check: bool = True):
        # Requests are read one at a time into columns (a million Request records would not
        # fit beside them); equal session names are kept once.
        self.header = header
        session: list[str] = []
        # Typed arrays for the per-request lookups (indexing numpy scalars one by one is ~10x
        # slower, a list of ints takes 4-5x the memory); the numpy columns are views of them.
        t_s = array("d")
        prompt = array("q")
        output = array("q")
        parent = array("q")
        shared = array("q")
        # flat, not a tuple of int objects per request: ~36 bytes a position down to 8, which
        # is most of a million-request agent trace's memory (bench/scale.py)
        self.user_starts = Ragged()
        self.tool_starts = Ragged()
        self.observed: list[dict | None] = []
        names: dict[str, str] = {}
        later: list[Request] = []     # (check) parents not read yet: ids that are not positions
        for r in requests:
            if check:                 # iter_trace has already checked every line of a file
                _check_request(r, None, where=f"request {r.id}")
                if r.parent >= len(prompt):
                    later.append(r)
                elif r.parent >= 0:
                    _check_parent_seq(r, prompt[r.parent] + output[r.parent], f"request {r.id}")
            s = r.session
            session.append(names.setdefault(s, s))
            t_s.append(r.t_s)
            prompt.append(r.n_prompt)
            output.append(r.n_output)
            parent.append(r.parent)
            shared.append(r.n_shared)
            self.user_starts.append(r.user_starts)
            self.tool_starts.append(r.tool_starts)
            self.observed.append(r.observed)
        for r in later:
            _check_parent_seq(r, prompt[r.parent] + output[r.parent], f"request {r.id}")
        self.session = session
        self._t, self._prompt, self._output, self._parent, self._shared = t_s, prompt, output, parent, shared
        self.t_s = _view(t_s, np.float64)
        self.n_prompt = _view(prompt, np.int64)
        self.n_output = _view(output, np.int64)
        self.parent = _view(parent, np.int64)
        self.n_shared = _view(shared, np.int64)
        self._trie: TrieOrder | None = None

    def __len__(self) -> int:
        return len(self.session)

    def __getitem__(self, i: int) -> Request:
        return Request(id=i, session=self.session[i], t_s=float(self.t_s[i]),
                       n_prompt=int(self.n_prompt[i]), n_output=int(self.n_output[i]),
                       parent=int(self.parent[i]), n_shared=int(self.n_shared[i]),
                       user_starts=self.user_starts[i], tool_starts=self.tool_starts[i],
                       observed=self.observed[i])

    def __iter__(self) -> Iterator[Request]:
        return (self[i] for i in range(len(self)))

    @property
    def name(self) -> str:
        return self.header.name

    def seq_lcp(self, a: int, b: int) -> int:
        """Common prefix, in tokens, of the full sequences (prompt + output) of requests a and b."""
        if a == b:
            return self._prompt[a] + int(self.n_output[a])
        parent = self._parent
        # The common cases cost no table: one is the other's parent, or both share a parent.
        pa, pb = parent[a], parent[b]
        if pa == b:
            return self._shared[a]
        if pb == a:
            return self._shared[b]
        if pa == pb and pa >= 0:
            sa, sb = self._shared[a], self._shared[b]
            return sa if sa < sb else sb
        return self.trie.lcp(a, b)

    @property
    def trie(self) -> TrieOrder:
        """The sequences in trie order, for O(1) common-prefix queries (built on first use)."""
        t = self._trie
        if t is None:
            t = self._trie = TrieOrder(self._parent, self._shared)
        return t

    def prefix_with_state(self, seq: int, n_cached: int, req: int) -> int:
        """LCP of request ``req``'s prompt with a slot holding the first ``n_cached`` tokens of ``seq``."""
        if seq < 0 or n_cached <= 0:
            return 0
        if self._parent[req] == seq:  # the common case: the slot holds the parent
            lcp = self._shared[req]
        else:
            lcp = self.seq_lcp(req, seq)
        return min(lcp, n_cached, self._prompt[req])

    def total_prompt_tokens(self) -> int:
        """Sum of prompt lengths."""
        return int(self.n_prompt.sum())


class Ragged(Sequence):
    """Per-request tuples of positions kept flat in two typed arrays (the values, and where each
    request's run ends); reading one builds its tuple."""

    __slots__ = ("_vals", "_ends")

    def __init__(self) -> None:
        self._vals = array("q")
        self._ends = array("q")

    def append(self, xs: Iterable[int]) -> None:
        self._vals.extend(xs)
        self._ends.append(len(self._vals))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._ends)
        end = self._ends[i]   # IndexError past the end, as a list's
        start = self._ends[i - 1] if i > 0 else 0
        return tuple(self._vals[start:end]) if end > start else ()

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return (self[i] for i in range(len(self._ends)))


class TrieOrder:
    """The trace's sequences sorted as the leaves of their token trie, for O(1) common prefixes.

    Because each request's ``parent`` is its best earlier match, the common prefix of two
    sequences is the least ``n_shared`` on the parent-tree path between them (module docstring).
    Hanging each request instead off its nearest ancestor whose own ``n_shared`` is smaller (the
    prefix it shares with the parent is shared with all ancestors in between) keeps every such
    minimum and makes ``n_shared`` fall strictly going up: the tree becomes the trie. Its
    post-order, children by ascending ``n_shared``, lists the sequences so that every group
    sharing more than m tokens is contiguous, and the common prefix of neighbours is the
    ``n_shared`` of the earlier one (0 across trees). Then, as with a suffix array's LCP array::

        order:  s0    s1    s2    s3    s4          gaps[i] = LCP(order[i], order[i+1])
        gaps:      a0    a1    a2    a3             LCP(s1, s4) = min(a1, a2, a3)

    and ``lcp`` answers with a sparse table of range minima (two lookups). The common prefix of
    a fixed sequence with the others only falls as one walks away from it in this order, which
    is what the simulator's prompt-cache index uses (``sim._PromptCache``).
    """

    __slots__ = ("pos", "levels")

    def __init__(self, parent: list[int], shared: list[int]):
        n = len(parent)
        # (typed arrays, not lists: a million-request trace builds this in a few tens of MiB)
        up = array("q", [-1]) * n    # trie parent
        w = array("q", bytes(8 * n))  # n_shared towards it (0: a root)
        for g in range(n):       # parents come before children
            p = parent[g]
            if p < 0:
                continue
            x = shared[g]
            while p >= 0 and w[p] >= x:
                p = up[p]
            if p >= 0:
                up[g], w[g] = p, x
        size = array("q", [1]) * n
        for g in range(n - 1, -1, -1):
            p = up[g]
            if p >= 0:
                size[p] += size[g]
        # Each child's block starts after its elder siblings' (ascending n_shared, then id);
        # roots are the children of a virtual node.
        upa, wa, sz = (np.frombuffer(x, dtype=np.int64) if n else np.zeros(0, np.int64) for x in (up, w, size))
        by = np.lexsort((np.arange(n), wa, np.where(upa >= 0, upa, n)))
        par = upa[by]
        before = np.cumsum(sz[by]) - sz[by]
        first = np.ones(n, dtype=bool)
        first[1:] = par[1:] != par[:-1]
        off = np.empty(n, dtype=np.int64)
        off[by] = before - before[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
        del by, par, before, first
        start = array("q", off.tobytes())
        del off
        for g in range(n):
            p = up[g]
            if p >= 0:
                start[g] += start[p]
        pos = (np.frombuffer(start, dtype=np.int64) if n else np.zeros(0, np.int64)) + sz - 1
        del start                # post-order: a node after its block
        gaps = np.zeros(max(n - 1, 0), dtype=np.int64)
        inner = pos < n - 1
        gaps[pos[inner]] = wa[inner]
        self.pos = array("q", pos.tobytes())
        # levels[k][i] = min(gaps[i : i + 2**k])
        typ, dt = ("i", np.int32) if (gaps.size == 0 or int(gaps.max()) < 2**31) else ("q", np.int64)
        lv = gaps.astype(dt)
        del gaps
        self.levels = [array(typ, lv.tobytes())]
        k, m = 1, lv.size
        while (1 << k) <= m:
            lv = np.minimum(lv[:-(1 << (k - 1))], lv[1 << (k - 1):])
            self.levels.append(array(typ, lv.tobytes()))
            k += 1

    def between(self, i: int, j: int) -> int:
        """Least common prefix of neighbours between trie positions i < j: LCP(order[i], order[j])."""
        k = (j - i).bit_length() - 1
        t = self.levels[k]
        x, y = t[i], t[j - (1 << k)]
        return x if x < y else y

    def lcp(self, a: int, b: int) -> int:
        """Common prefix of the sequences of two different requests a and b."""
        i, j = self.pos[a], self.pos[b]
        if i > j:
            i, j = j, i
        k = (j - i).bit_length() - 1
        t = self.levels[k]
        x, y = t[i], t[j - (1 << k)]
        return x if x < y else y


def _check_request(r: Request, trace: Trace | None, where: str) -> None:
    if r.n_prompt < 1:
        raise TraceError(f"{where}: n_prompt must be >= 1, got {r.n_prompt}")
    if r.n_output < 0:
        raise TraceError(f"{where}: n_output must be >= 0, got {r.n_output}")
    if r.parent >= r.id:
        raise TraceError(f"{where}: parent {r.parent} must be an earlier request id")
    if r.parent < 0 and r.n_shared != 0:
        raise TraceError(f"{where}: n_shared = {r.n_shared} but there is no parent")
    if r.n_shared < 0 or r.n_shared > r.n_prompt:
        raise TraceError(f"{where}: n_shared = {r.n_shared} outside [0, n_prompt = {r.n_prompt}]")
    if trace is not None and r.parent >= 0:
        _check_parent_seq(r, int(trace.n_prompt[r.parent] + trace.n_output[r.parent]), where)
    for name, xs in (("user", r.user_starts), ("tool", r.tool_starts)):
        if any(not (0 <= x < r.n_prompt) for x in xs):
            raise TraceError(f"{where}: '{name}' positions must lie in [0, n_prompt)")
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise TraceError(f"{where}: '{name}' positions must be strictly increasing")


def _view(a: array, dtype: type) -> np.ndarray:
    """A numpy array sharing a typed array's memory."""
    return np.frombuffer(a, dtype=dtype) if len(a) else np.zeros(0, dtype=dtype)


def _check_parent_seq(r: Request, p_seq: int, where: str) -> None:
    if r.n_shared > p_seq:
        raise TraceError(f"{where}: n_shared = {r.n_shared} exceeds the parent's sequence "
                         f"({p_seq} tokens)")


def _open_text(path: str | os.PathLike) -> io.TextIOBase:
    p = str(path)
    if p.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return open(p, encoding="utf-8")


def _as_int(rec: dict, key: str, where: str, default: int | None = None) -> int:
    v = rec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TraceError(f"{where}: field '{key}' must be an integer, got {v!r}")
    return v


def _positions(rec: dict, key: str, where: str) -> tuple[int, ...]:
    v = rec.get(key, [])
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise TraceError(f"{where}: field '{key}' must be a list of integers")
    return tuple(v)


def request_from_json(rec: object, line_no: int, path: str,
                      inherited: tuple[list, list] | None) -> Request:
    """Build a Request from one decoded JSON line; ``inherited`` are the parent's full position lists."""
    where = f"{path}:{line_no}"
    if not isinstance(rec, dict):
        raise TraceError(f"{where}: expected a JSON object for a request")
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise TraceError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = set(rec) - _KNOWN
    if unknown:
        raise TraceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    t = rec["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or t < 0:
        raise TraceError(f"{where}: field 't' must be a non-negative number of seconds, got {t!r}")
    parent = rec.get("parent")
    parent = -1 if parent is None else _as_int(rec, "parent", where)
    n_shared = _as_int(rec, "n_shared", where, 0)
    n_prompt = _as_int(rec, "n_prompt", where)
    # Files list only the positions at or after n_shared; earlier ones come from the parent,
    # unless "user_all"/"tool_all" give the whole list (a chat re-rendered so that a user turn
    # starts on a token the parent shares but where the parent had another role).
    lists = []
    for key in ("user", "tool"):
        if f"{key}_all" in rec:
            if key in rec:
                raise TraceError(f"{where}: give either '{key}' or '{key}_all', not both")
            lists.append(_positions(rec, f"{key}_all", where))
            continue
        new = _positions(rec, key, where)
        if any(x < n_shared for x in new):
            raise TraceError(f"{where}: '{key}' positions must be >= n_shared ({n_shared}); earlier "
                             f"ones are inherited from the parent (or give '{key}_all')")
        if inherited is not None:
            par = inherited[0] if key == "user" else inherited[1]
            new = tuple(x for x in par if x < n_shared) + new
        lists.append(new)
    user, tool = lists
    obs = rec.get("obs")
    if obs is not None and not isinstance(obs, dict):
        raise TraceError(f"{where}: field 'obs' must be an object")
    session = rec["session"]
    if not isinstance(session, (str, int)):
        raise TraceError(f"{where}: field 'session' must be a string")
    return Request(id=_as_int(rec, "id", where), session=str(session), t_s=float(t),
                   n_prompt=n_prompt, n_output=_as_int(rec, "n_output", where), parent=parent,
                   n_shared=n_shared, user_starts=user, tool_starts=tool, observed=obs)


def request_to_json(r: Request, parent_user: tuple[int, ...] = (), parent_tool: tuple[int, ...] = ()) -> dict:
    """The JSON object written for one request (positions before n_shared are left out)."""
    d: dict = {"id": r.id, "session": r.session, "t": r.t_s, "n_prompt": r.n_prompt,
               "n_output": r.n_output}
    if r.parent >= 0:
        d["parent"] = r.parent
        d["n_shared"] = r.n_shared
    for key, xs, par in (("user", r.user_starts, parent_user), ("tool", r.tool_starts, parent_tool)):
        if tuple(x for x in xs if x < r.n_shared) != tuple(x for x in par if x < r.n_shared):
            d[f"{key}_all"] = list(xs)          # the inherited part differs from the parent's
        elif any(x >= r.n_shared for x in xs):
            d[key] = [x for x in xs if x >= r.n_shared]
    if r.observed:
        d["obs"] = r.observed
    return d


def read_header(line: str, path: str) -> TraceHeader:
    """Parse and check the header line."""
    try:
        h = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}:1: not JSON ({e.msg}); expected the ckptsim trace header") from None
    if not isinstance(h, dict) or h.get("schema") != SCHEMA:
        raise TraceError(f"{path}:1: expected a header object with \"schema\": \"{SCHEMA}\"")
    if h.get("version") != SCHEMA_VERSION:
        raise TraceError(f"{path}:1: unsupported trace version {h.get('version')!r} "
                         f"(this ckptsim reads version {SCHEMA_VERSION})")
    meta = h.get("meta") or {}
    return TraceHeader(name=str(h.get("name", "")), source=str(h.get("source", "")),
                       tokenizer=str(h.get("tokenizer", "")), derived=bool(h.get("derived", False)),
                       notes=str(h.get("notes", "")), meta=meta if isinstance(meta, dict) else {})


def iter_trace(path: str | os.PathLike) -> tuple[TraceHeader, Iterator[Request]]:
    """Stream a trace: the header, then requests one by one, validated as they are read."""
    path_s = str(path)
    f = _open_text(path)
    try:
        first = f.readline()
    except UnicodeDecodeError:
        f.close()
        raise TraceError(f"{path_s}:1: not a UTF-8 text file") from None
    if not first.strip():
        f.close()
        raise TraceError(f"{path_s}:1: empty file; expected the ckptsim trace header")
    try:
        header = read_header(first, path_s)
    except TraceError:
        f.close()
        raise

    def gen() -> Iterator[Request]:
        # Only the position lists are kept per request: they are needed to resolve inheritance.
        users: list[tuple[int, ...]] = []
        tools: list[tuple[int, ...]] = []
        seq_len = array("q")
        with f:
            line_no = 1
            while True:
                try:
                    line = f.readline()
                except UnicodeDecodeError:
                    raise TraceError(f"{path_s}:{line_no + 1}: not UTF-8 text") from None
                if not line:
                    break
                line_no += 1
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TraceError(f"{path_s}:{line_no}: not valid JSON ({e.msg})") from None
                where = f"{path_s}:{line_no}"
                idx = len(seq_len)
                if isinstance(rec, dict) and rec.get("id") != idx:
                    raise TraceError(f"{where}: request ids must be 0, 1, 2, ... in file order; "
                                     f"expected id {idx}, got {rec.get('id')!r}")
                par = rec.get("parent") if isinstance(rec, dict) else None
                inherited = None
                if isinstance(par, int) and not isinstance(par, bool) and 0 <= par < idx:
                    inherited = (users[par], tools[par])
                r = request_from_json(rec, line_no, path_s, inherited)
                _check_request(r, None, where)
                if r.parent >= 0 and r.n_shared > seq_len[r.parent]:
                    raise TraceError(f"{where}: n_shared = {r.n_shared} exceeds the parent's sequence "
                                     f"({seq_len[r.parent]} tokens)")
                users.append(r.user_starts)
                tools.append(r.tool_starts)
                seq_len.append(r.n_seq)
                yield r
    return header, gen()


def load_trace(path: str | os.PathLike) -> Trace:
    """Load and validate a trace file (``.jsonl`` or ``.jsonl.gz``)."""
    if not Path(path).exists():
        raise TraceError(f"{path}: no such file")
    header, reqs = iter_trace(path)
    return Trace(header, reqs, check=False)


class TraceWriter:
    """Write a trace request by request (streaming); refuses to overwrite an existing file."""

    def __init__(self, path: str | os.PathLike, header: TraceHeader, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --force to overwrite it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name first so a crash never leaves a half-written trace behind.
        self._tmp = self.path.with_name(self.path.name + ".part")
        raw = gzip.open(self._tmp, "wt", encoding="utf-8") if str(path).endswith(".gz") \
            else open(self._tmp, "w", encoding="utf-8")
        self._f = raw
        self._f.write(json.dumps(header.to_json()) + "\n")
        self._users: list[tuple[int, ...]] = []
        self._tools: list[tuple[int, ...]] = []
        self._seq: list[int] = []
        self.n_written = 0

    def write(self, r: Request) -> None:
        """Append one request; its id must be the next one and its parent an earlier one."""
        if r.id != self.n_written:
            raise TraceError(f"request id {r.id}: expected {self.n_written} (ids are dense, in order)")
        _check_request(r, None, f"request {r.id}")
        pu: tuple[int, ...] = ()
        pt: tuple[int, ...] = ()
        if r.parent >= 0:
            if r.n_shared > self._seq[r.parent]:
                raise TraceError(f"request {r.id}: n_shared {r.n_shared} exceeds parent's sequence")
            pu, pt = self._users[r.parent], self._tools[r.parent]
        self._f.write(json.dumps(request_to_json(r, pu, pt), separators=(",", ":")) + "\n")
        self._users.append(r.user_starts)
        self._tools.append(r.tool_starts)
        self._seq.append(r.n_seq)
        self.n_written += 1

    def close(self) -> None:
        """Finish the file (moves it into place)."""
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_trace(path: str | os.PathLike, header: TraceHeader, requests: Iterable[Request],
               overwrite: bool = False) -> int:
    """Write a whole trace; returns the number of requests written."""
    with TraceWriter(path, header, overwrite=overwrite) as w:
        for r in requests:
            w.write(r)
        return w.n_written


class PrefixIndex:
    """Finds the best parent for a new token sequence among earlier ones (for importers).

    Sequences are given as lists of hashable blocks (token ids, or block hashes). A trie over
    blocks keeps, per node, the latest request whose sequence passes through it, so the best
    parent (longest common prefix, latest on ties) is found in O(length).
    """

    def __init__(self) -> None:
        self._root: dict = {}

    def add(self, request_id: int, blocks: Iterable) -> None:
        """Insert the sequence of ``request_id``."""
        node = self._root
        for b in blocks:
            nxt = node.get(b)
            if nxt is None:
                nxt = node[b] = {}
            nxt[None] = request_id
            node = nxt

    def best_parent(self, blocks: Iterable) -> tuple[int, int]:
        """(request id, number of shared blocks) of the earlier sequence sharing the most; (-1, 0) if none."""
        node = self._root
        best, depth = -1, 0
        for i, b in enumerate(blocks):
            nxt = node.get(b)
            if nxt is None:
                break
            best, depth = nxt[None], i + 1
            node = nxt
        return best, depth
