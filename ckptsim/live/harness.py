"""Drive a live llama-server on loopback through a measurement plan; append raw measurements to JSONL.

The harness sends prompts as token-id lists to ``/completion`` so it knows every prompt's exact
length and its common prefix with the slot's cache and with every earlier prompt. It pins slot 0
(``id_slot``) and asks for one output token, so the cache after a request is exactly the prompt
(spec §0: prompt + generated[:-1]). Each response's ``timings`` (``cache_n``, ``prompt_n``,
``prompt_ms``) is written to the measurements file at once; the file is only ever appended to,
so every measurement taken before a failure is kept.

One pass of the plan (passes are interleaved depth by depth), for each context depth d (positions: ``|`` marks a checkpoint the server
makes, at T-min(b, 4+ub) and T-4, spec §2.3)::

    cold    [0 ............ D)                  prefill from 0, D = d/0.9
    cut     [0 ........ d)                      PR #19970 reproducer: no checkpoint <= d-1
                                                => full re-processing
    for L in lengths:
      ext   [0 ........ d)[+L new)              pure extension: cache_n = d, prompt_n = L
      hit   same prompt again                   restores the T-4 checkpoint: prompt_n = 4
      back  [0 ........ d)                      truncation: restores a checkpoint <= d-1
    rcut    [0 ........ d - x)                  truncation just after a checkpoint: a restore
    decode  [0 ... d) + n_predict tokens        generation speed at depth d

The first pass starts with a probe that checks the model has hybrid/recurrent memory.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

MEASUREMENT_SCHEMA = "ckptsim-measurements"
MEASUREMENT_VERSION = 1
_WORDS = ("the checkpoint cache restores a recurrent state after the common prefix of two prompts "
          "while the server processes batches of tokens and writes its log to a file on disk ")


class ServerError(RuntimeError):
    """The server failed or misbehaved; the message is one line."""


class EndpointMissing(ServerError):
    """The server does not have an endpoint the harness needs."""


class NotHybridError(ServerError):
    """The model has no hybrid/recurrent memory, so it makes no context checkpoints."""


class Client:
    """Minimal JSON-over-HTTP client for llama-server, loopback addresses only."""

    def __init__(self, url: str, timeout_s: float = 300.0):
        u = urlparse(url if "://" in url else "http://" + url)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"--url {url!r}: the harness only talks to a server on loopback "
                             "(http://127.0.0.1:PORT)")
        self.url = f"http://{u.hostname}:{u.port or 80}"
        self.timeout_s = timeout_s

    def _call(self, path: str, body: dict | None = None) -> dict | list:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = _error_message(e)
            if e.code in (404, 405, 501):
                raise EndpointMissing(f"server at {self.url} has no {path} endpoint "
                                      f"(HTTP {e.code}{': ' + detail if detail else ''})") from None
            raise ServerError(f"server at {self.url} answered HTTP {e.code} on {path}"
                              f"{': ' + detail if detail else ''}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                raise ServerError(f"cannot connect to {self.url}: connection refused "
                                  "(is llama-server running there?)") from None
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServerError(f"{path} on {self.url} timed out after {self.timeout_s:.0f} s") from None
            raise ServerError(f"cannot reach {self.url}{path}: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise ServerError(f"{path} on {self.url} timed out after {self.timeout_s:.0f} s") from None
        except (ConnectionError, OSError) as e:
            raise ServerError(f"connection to {self.url} failed on {path}: {e}") from None
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ServerError(f"{path} on {self.url} did not answer JSON") from None

    def get(self, path: str) -> dict | list:
        """GET ``path`` and decode the JSON answer."""
        return self._call(path)

    def post(self, path: str, body: dict) -> dict:
        """POST a JSON body to ``path`` and decode the JSON answer."""
        out = self._call(path, body)
        if not isinstance(out, dict):
            raise ServerError(f"{path} on {self.url} answered {type(out).__name__}, expected an object")
        return out


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        d = json.loads(e.read() or b"{}")
        msg = d.get("error", {}).get("message", "") if isinstance(d.get("error"), dict) else d.get("error", "")
        return " ".join(str(msg).split())[:200]
    except (ValueError, OSError, AttributeError):
        return ""


@dataclass(frozen=True)
class Plan:
    """What to measure: context depths, new-token counts, repeats (passes) and extra probes."""

    depths: tuple[int, ...] = (0, 1024, 2048, 4096)
    lengths: tuple[int, ...] = (32, 256, 1024)
    passes: int = 3              # the whole plan is run this many times; the last pass is held out
    decode_tokens: int = 16      # tokens generated per depth to time decoding (0: skip)
    rcut_offset: int = 64        # 'rcut' cuts this many tokens after a checkpoint position
    chat_turns: int = 2          # short /v1/chat/completions exchange at the end (0: skip)
    seed: int = 0

    def n_requests(self) -> int:
        """Requests the plan sends (for the progress bar)."""
        per_pass = sum((3 + 3 * len(self.lengths) if d > 0 else 3 * len(self.lengths))
                       + (1 if self.decode_tokens else 0) for d in self.depths)
        return 3 + self.passes * per_pass + self.chat_turns

    def deepest(self, n_batch: int, n_ubatch: int) -> int:
        """Length of the longest prompt the plan sends."""
        d = max(self.depths)
        return max(_cold_len(d, n_batch, n_ubatch), d + max(self.lengths) + 16)

    @classmethod
    def for_context(cls, n_ctx: int, n_batch: int = 2048, n_ubatch: int = 512, cap: int = 16384,
                    passes: int = 3, quick: bool = False, seed: int = 0) -> Plan:
        """A plan whose longest prompt fits ``min(n_ctx, cap)``."""
        top = min(n_ctx, cap) - 16
        lengths = (16, 64, 256) if quick else (32, 256, 1024)
        span = min(n_batch, 4 + n_ubatch)
        longest = min(int(top * 0.9), top - span - 64, top - max(lengths) - 16)
        if longest < 2 * span:
            raise ValueError(f"n_ctx = {n_ctx} is too small for a calibration plan with -b {n_batch} "
                             f"-ub {n_ubatch} (need about {4 * span + 256} tokens)")
        n_depth = 3 if quick else 4
        depths = tuple(int(longest * i / (n_depth - 1)) // 16 * 16 for i in range(n_depth))
        return cls(depths=depths, lengths=lengths, passes=passes, seed=seed,
                   decode_tokens=8 if quick else 16, chat_turns=2)


def _cold_len(d: int, n_batch: int, n_ubatch: int) -> int:
    """Length of the 'cold' prompt at depth d: cutting it to d leaves no checkpoint at or below d.

    The server's checkpoints sit at T-min(b, 4+ub) and T-4, so T must exceed d by more than that;
    and at least d/0.9, PR #19970's 90% cut.
    """
    return max(int(round(d / 0.9)), d + min(n_batch, 4 + n_ubatch) + 64) if d > 0 else 0


@dataclass
class ServerInfo:
    """What the server says about itself before the plan runs."""

    url: str
    n_ctx: int
    total_slots: int
    build: str
    model_path: str
    props: dict = field(default_factory=dict)


def probe(client: Client) -> ServerInfo:
    """Check /health, /props, /slots and /tokenize; raises ServerError with the first problem."""
    h = client.get("/health")
    if not isinstance(h, dict) or h.get("status") != "ok":
        raise ServerError(f"server at {client.url} is not ready: /health answered {h!r}"[:200])
    props = client.get("/props")
    if not isinstance(props, dict):
        raise ServerError(f"/props on {client.url} did not answer an object")
    client.get("/slots")
    client.post("/tokenize", {"content": "probe"})
    dgs = props.get("default_generation_settings", {}) or {}
    n_ctx = int(dgs.get("n_ctx") or props.get("n_ctx") or 0)
    if n_ctx <= 0:
        raise ServerError(f"/props on {client.url} does not report n_ctx")
    keep = {k: props[k] for k in ("total_slots", "model_path", "model_alias", "build_info",
                                  "model_ftype", "modalities") if k in props}
    return ServerInfo(url=client.url, n_ctx=n_ctx, total_slots=int(props.get("total_slots", 1)),
                      build=str(props.get("build_info", "unknown")),
                      model_path=str(props.get("model_path", "")), props=keep)


def hardware() -> dict:
    """The machine the measurements come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "n_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "gpu": _gpus()}


def _gpus() -> str:
    """NVIDIA GPUs as nvidia-smi names them ('none (CPU only)' without one): a profile says where it ran."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "none (CPU only)"
    rows = [" ".join(x.split()) for x in out.stdout.strip().splitlines() if x.strip()]
    if out.returncode != 0 or not rows:
        return "none (CPU only)"
    return "; ".join(f"{r.split(',')[0].strip()} ({', '.join(x.strip() for x in r.split(',')[1:])})"
                     for r in rows)


class MeasurementLog:
    """The append-only JSONL of raw measurements: records are added, never edited or removed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, rec: dict) -> None:
        """Append one record and flush it to disk."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_measurements(path: str | Path, run_id: str | None = None) -> tuple[dict, list[dict]]:
    """(run header, request records) of one run in a measurements file (the last run by default)."""
    runs, recs, order = _read_runs(path)
    rid = run_id or order[-1]
    if rid not in runs:
        raise ValueError(f"{path}: no run {rid!r} (runs: {', '.join(order)})")
    return runs[rid], recs[rid]


def list_runs(path: str | Path) -> list[str]:
    """Run ids of a measurements file, oldest first."""
    return _read_runs(path)[2]


def _read_runs(path: str | Path) -> tuple[dict[str, dict], dict[str, list[dict]], list[str]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such measurements file")
    runs: dict[str, dict] = {}
    recs: dict[str, list[dict]] = {}
    order: list[str] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(d, dict) or d.get("schema") != MEASUREMENT_SCHEMA:
                raise ValueError(f"{path}:{i}: not a ckptsim measurement record")
            rid = str(d.get("run"))
            if d.get("kind") == "run":
                runs[rid] = d
                recs.setdefault(rid, [])
                order.append(rid)
            elif d.get("kind") == "request":
                if rid not in runs:
                    raise ValueError(f"{path}:{i}: request of run {rid!r} before its run header")
                recs[rid].append(d)
            elif d.get("kind") != "error":
                raise ValueError(f"{path}:{i}: unknown record kind {d.get('kind')!r}")
    if not order:
        raise ValueError(f"{path}: no run in this file")
    return runs, recs, order


@dataclass
class _State:
    prompts: list[np.ndarray] = field(default_factory=list)   # every prompt sent, in order
    cache: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cache_extra: int = 0        # generated tokens in the cache, unknown to the harness


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ne = np.flatnonzero(a[:n] != b[:n])
    return int(ne[0]) if len(ne) else n


class Harness:
    """Runs a :class:`Plan` against a server and appends each measurement to a JSONL file."""

    def __init__(self, client: Client, out: str | Path, log_path: str | Path | None = None,
                 n_batch: int = 2048, n_ubatch: int = 512, flags: dict | None = None,
                 on_progress: Callable[[str], None] | None = None):
        self.client = client
        self.out = MeasurementLog(out)
        self.log_path = Path(log_path) if log_path else None
        self.n_batch, self.n_ubatch = n_batch, n_ubatch
        self.flags = flags or {}
        self.on_progress = on_progress or (lambda desc: None)
        self.state = _State()
        self.run_id = ""
        self.n_taken = 0
        self._t0 = 0.0
        self._pool = np.arange(33, 127)

    # -- one request ------------------------------------------------------------------------
    def _send(self, tokens: np.ndarray, phase: str, pass_no: int, point: dict,
              n_predict: int = 1) -> dict:
        st = self.state
        cache_before = len(st.cache) + st.cache_extra
        lcp_cache = _lcp(st.cache, tokens)
        parent, n_shared = -1, 0
        for j in range(len(st.prompts) - 1, -1, -1):   # latest wins ties
            s = _lcp(st.prompts[j], tokens)
            if s > n_shared:
                parent, n_shared = j, s
        log_off = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else None
        body = {"prompt": tokens.tolist(), "n_predict": n_predict, "id_slot": 0, "cache_prompt": True,
                "ignore_eos": True, "temperature": 0.0}
        t_send = time.monotonic()
        resp = self.client.post("/completion", body)
        wall_ms = (time.monotonic() - t_send) * 1000.0
        tm = resp.get("timings")
        if not isinstance(tm, dict) or "prompt_ms" not in tm or "cache_n" not in tm:
            raise ServerError(f"/completion on {self.client.url} answered without timings "
                              "(cache_n, prompt_n, prompt_ms); this server is too old")
        predicted_n = int(tm.get("predicted_n", 1) or 0)
        rec = {"schema": MEASUREMENT_SCHEMA, "v": MEASUREMENT_VERSION, "kind": "request",
               "run": self.run_id, "seq": len(st.prompts), "phase": phase, "pass": pass_no,
               "point": point, "endpoint": "/completion", "t_s": round(t_send - self._t0, 6),
               "n_prompt": int(len(tokens)), "n_predict": n_predict, "cache_len_before": cache_before,
               "lcp_cache": lcp_cache, "parent": parent, "n_shared": n_shared,
               "cache_n": int(tm["cache_n"]), "prompt_n": int(tm.get("prompt_n", -1)),
               "prompt_ms": float(tm["prompt_ms"]), "predicted_n": predicted_n,
               "predicted_ms": float(tm.get("predicted_ms", 0.0)), "wall_ms": round(wall_ms, 3),
               "log_offset": log_off}
        self.out.append(rec)
        self.n_taken += 1
        st.prompts.append(tokens)
        st.cache = tokens
        st.cache_extra = max(predicted_n - 1, 0)
        self.on_progress(f"{phase} d={point.get('d', '')}")
        return rec

    def _fresh(self, rng: np.random.Generator, n: int) -> np.ndarray:
        t = rng.choice(self._pool, size=n).astype(np.int64)
        if len(t) and len(self.state.cache) and t[0] == self.state.cache[0]:
            t[0] = self._pool[0] if t[0] != self._pool[0] else self._pool[1]   # start a new prefix
        return t

    # -- the plan ---------------------------------------------------------------------------
    def _probe_hybrid(self, rng: np.random.Generator, n_ctx: int) -> None:
        """Long prompt, then cut far below its checkpoints: a hybrid model must re-process it all."""
        span = min(self.n_batch, 4 + self.n_ubatch)
        T = min(n_ctx - 16, max(4 * span, 1024))
        base = self._fresh(rng, T)
        self._send(base, "warmup", -1, {"d": 0, "T": T})
        self._send(base, "warmup", -1, {"d": 0, "T": T})
        cut = T // 2
        r = self._send(base[:cut], "probe", -1, {"d": cut, "T": T})
        if r["cache_n"] > 0 and r["cache_n"] >= cut - 1:
            raise NotHybridError(
                f"the model at {self.client.url} reused {r['cache_n']} cached tokens of a prompt cut "
                f"to {cut} below every checkpoint: it has no hybrid/recurrent memory, so "
                "llama-server makes no context checkpoints and there is nothing to calibrate")

    def _depth_block(self, rng: np.random.Generator, d: int, plan: Plan, p: int) -> None:
        D = _cold_len(d, self.n_batch, self.n_ubatch)
        base = self._fresh(rng, max(D, d))
        if d > 0:
            self._send(base[:D], "cold", p, {"d": D})
            self._send(base[:d], "cut", p, {"d": d, "from": D})
        for L in plan.lengths:
            ext = np.concatenate([base[:d], self._fresh(rng, L) if d == 0 else
                                  rng.choice(self._pool, size=L).astype(np.int64)])
            self._send(ext, "ext", p, {"d": d, "L": L})
            self._send(ext, "hit", p, {"d": d, "L": L})
            if d > 0:
                self._send(base[:d], "back", p, {"d": d, "L": L})
            else:   # depth 0: nothing to go back to; time a second cold prefill of L instead
                self._send(self._fresh(rng, L), "ext", p, {"d": 0, "L": L})
        if d > 0:
            span = min(self.n_batch, 4 + self.n_ubatch)
            k = d - span          # a checkpoint of the last 'back' (or 'cut') request
            cut = k + plan.rcut_offset if k > 0 else max(1, d // 2)
            self._send(base[:cut], "rcut", p, {"d": cut, "k": k})
        if plan.decode_tokens:
            self._send(np.concatenate([base[:d], self._fresh(rng, 16)]), "decode", p,
                       {"d": d + 16}, n_predict=plan.decode_tokens)

    def _chat(self, plan: Plan) -> None:
        msgs: list[dict] = []
        for i in range(plan.chat_turns):
            msgs.append({"role": "user", "content": f"turn {i}: " + _WORDS * 4})
            t_send = time.monotonic()
            resp = self.client.post("/v1/chat/completions",
                                    {"messages": msgs, "max_tokens": 1, "id_slot": 0, "temperature": 0.0})
            tm = resp.get("timings") or {}
            usage = resp.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            self.out.append({"schema": MEASUREMENT_SCHEMA, "v": MEASUREMENT_VERSION, "kind": "request",
                             "run": self.run_id, "seq": None, "phase": "chat", "pass": -1,
                             "point": {"turn": i}, "endpoint": "/v1/chat/completions",
                             "t_s": round(t_send - self._t0, 6),
                             "n_prompt": int(usage.get("prompt_tokens", -1)),
                             "cache_n": int(tm.get("cache_n", cached if cached is not None else -1)),
                             "prompt_n": int(tm.get("prompt_n", -1)),
                             "prompt_ms": float(tm.get("prompt_ms", -1.0)),
                             "predicted_n": int(tm.get("predicted_n", 0)),
                             "predicted_ms": float(tm.get("predicted_ms", 0.0)),
                             "wall_ms": round((time.monotonic() - t_send) * 1000.0, 3)})
            self.n_taken += 1
            self.on_progress("chat")
            text = ((resp.get("choices") or [{}])[0].get("message") or {}).get("content") or "ok"
            msgs.append({"role": "assistant", "content": text})
        # the chat prompts are unknown token by token: forget the cache so a later run starts clean
        self.state.cache = np.zeros(0, np.int64)

    def run(self, plan: Plan, info: ServerInfo | None = None) -> str:
        """Run the whole plan; returns the run id. Measurements already taken stay on failure."""
        info = info or probe(self.client)
        deepest = plan.deepest(self.n_batch, self.n_ubatch)
        if deepest > info.n_ctx:
            raise ValueError(f"the plan needs prompts of {deepest} tokens but the server's "
                             f"n_ctx is {info.n_ctx}; lower the depths")
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._t0 = time.monotonic()
        tok = self.client.post("/tokenize", {"content": _WORDS * 2})
        ids = np.unique(np.asarray(tok.get("tokens") or [], dtype=np.int64))
        if len(ids) >= 16:          # ordinary tokens of this model's vocabulary
            self._pool = ids
        self.out.append({"schema": MEASUREMENT_SCHEMA, "v": MEASUREMENT_VERSION, "kind": "run",
                         "run": self.run_id, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "url": info.url, "n_ctx": info.n_ctx, "total_slots": info.total_slots,
                         "build": info.build, "model_path": info.model_path, "props": info.props,
                         "n_batch": self.n_batch, "n_ubatch": self.n_ubatch, "flags": self.flags,
                         "server_log": str(self.log_path) if self.log_path else None,
                         "hardware": hardware(), "plan": asdict(plan)})
        rng = np.random.default_rng(plan.seed)
        try:
            self._probe_hybrid(rng, info.n_ctx)
            # Passes are interleaved per depth so that drifting machine load (a shared CI box)
            # hits the fitted and the held-out pass alike.
            for d in plan.depths:
                for p in range(plan.passes):
                    self._depth_block(rng, d, plan, p)
            if plan.chat_turns:
                self._chat(plan)
        except (ServerError, OSError) as e:
            self.out.append({"schema": MEASUREMENT_SCHEMA, "v": MEASUREMENT_VERSION, "kind": "error",
                             "run": self.run_id, "error": str(e), "n_taken": self.n_taken})
            raise
        return self.run_id
