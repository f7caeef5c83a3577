"""Conformance: a fixed, seeded workload matrix against one real llama.cpp server, each workload's
``-lv 4`` log validated decision by decision with the ``llama-server`` policy of that build.

Every workload names the rules of the behaviour spec it exercises; together they cover the restore
rule (§2.2), placement (§2.3: near-end checkpoints at ``T - min(b, 4 + ub)`` and ``T - 4``, the
min step, user-message boundaries), FIFO and spacing eviction under a small cap (§3), slot
selection with several slots and the host prompt cache (§5), and batch sizes. Each workload runs
on a fresh server with its own flags and log (``--url`` runs them all on the user's one server).

Requests are sent one at a time (no concurrency: the server's order is then the harness's order,
so a disagreement is the model's, not a race). Everything is kept in the output folder:
``NAME.server.log`` and ``NAME.requests.jsonl`` (every request body and the server's answer,
appended as they happen), and ``conformance.json``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .harness import Client, ServerError

# prompt times are predicted with the profile measured on the tiny model (CPU); a build's own fit
# is `ckptsim calibrate --tiny` on that build
TINY_PROFILE = "tiny-qwen35-cpu-2core"
# printable ASCII bytes: the tiny model's byte-level vocabulary maps each to one token (id = byte)
_POOL = np.arange(33, 127)
_OUT_TOKEN = ord("a")


@dataclass(frozen=True)
class Step:
    """One request: a token prompt to /completion, or chat messages to /v1/chat/completions."""

    prompt: tuple[int, ...] = ()
    messages: tuple[dict, ...] = ()
    n_predict: int = 2
    slot: int | None = 0          # id_slot; None lets the server pick the slot (similarity / LRU)

    def body(self) -> tuple[str, dict]:
        """(endpoint, JSON body)."""
        # The random-weight model would emit random bytes; some builds (b9093-b10229 seen) then
        # fail the answer with HTTP 500 while parsing it. A strong bias makes every output 'a'.
        if self.messages:
            b: dict = {"messages": list(self.messages), "max_tokens": self.n_predict,
                       "temperature": 0.0, "cache_prompt": True, "logit_bias": {str(_OUT_TOKEN): 100}}
            path = "/v1/chat/completions"
        else:
            b = {"prompt": list(self.prompt), "n_predict": self.n_predict, "temperature": 0.0,
                 "cache_prompt": True, "ignore_eos": True, "logit_bias": [[_OUT_TOKEN, 100]]}
            path = "/completion"
        if self.slot is not None:
            b["id_slot"] = self.slot
        return path, b


@dataclass(frozen=True)
class Workload:
    """A named request sequence, the server flags it needs and the spec rules it exercises."""

    name: str
    rules: str
    steps: tuple[Step, ...]
    flags: dict = field(default_factory=dict)     # ServerFlags overrides


class _Gen:
    """Seeded token and text material, so a workload is the same on every run and build."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def toks(self, n: int) -> tuple[int, ...]:
        return tuple(int(x) for x in self.rng.choice(_POOL, n))

    def words(self, n: int) -> str:
        vocab = ("alpha", "beta", "gamma", "delta", "patch", "file", "test", "error", "value", "model",
                 "token", "cache", "state", "slot", "batch", "prompt", "server", "shell", "diff", "line")
        return " ".join(vocab[i] for i in self.rng.integers(0, len(vocab), n))


def _chat(system: str, turns: list[tuple[str, str]], last_user: str | None) -> tuple[dict, ...]:
    msgs = [{"role": "system", "content": system}]
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    if last_user is not None:
        msgs.append({"role": "user", "content": last_user})
    return tuple(msgs)


def matrix(seed: int = 0) -> list[Workload]:
    """The fixed workload matrix: every prompt fits one slot's context (n_ctx / -np, 4096 at least)."""
    g = _Gen(seed)
    S = lambda p, **k: Step(prompt=p, **k)   # noqa: E731
    w: list[Workload] = []

    a = g.toks(3000)
    w.append(Workload("truncate", "§2.2 restore at or below n_past; full re-processing when none is",
                      (S(a), S(a[:2600]), S(a[:1100] + g.toks(400)), S(a[:150]), S(a[:2990]),
                       S(a[:2990] + g.toks(600)))))

    a = g.toks(1500)
    ext = [a]
    for n in (500, 300, 32, 900):
        ext.append(ext[-1] + g.toks(n))
    w.append(Workload("extend", "§2.2 pure extension (#24110), §2.3 near-end checkpoints, identical resend",
                      tuple(S(p) for p in ext) + (S(ext[-1]), S(ext[-1][:-10]))))

    a = g.toks(3200)
    w.append(Workload("edit-middle", "§2.2 restore before an edit in the middle; §2.3 placement after it",
                      (S(a), S(a[:1600] + g.toks(1600)), S(a[:700] + g.toks(2300)), S(a[:3100] + g.toks(50)),
                       S(a[:1600] + g.toks(1800)))))

    # about 6 tokens a word with the tiny model's byte-level vocabulary: each chat stays < 6k tokens
    sysmsg = "You are a coding agent. " + g.words(200)
    turns = [(g.words(120), g.words(40)) for _ in range(4)]
    chat = [_chat(sysmsg, turns[:i], g.words(100)) for i in range(4)]
    edited = _chat(sysmsg, [turns[0], (g.words(110), turns[1][1])], g.words(80))
    w.append(Workload("chat-user-turns", "§2.3 checkpoints at user-message starts (b9310+); restore to an "
                      "edited turn", tuple(Step(messages=m) for m in chat) + (Step(messages=edited),
                      Step(messages=chat[1]))))

    long_turns = [(g.words(70), g.words(25)) for _ in range(5)]
    before = _chat(sysmsg, long_turns, g.words(60))
    compacted = _chat(sysmsg, [("Summary of the work so far: " + g.words(80), "ok")], g.words(60))
    w.append(Workload("compaction", "§2.2 a context rewritten after the system prompt (compaction)",
                      (Step(messages=_chat(sysmsg, long_turns[:3], g.words(60))), Step(messages=before),
                       Step(messages=compacted),
                       Step(messages=compacted[:-1] + ({"role": "assistant", "content": g.words(40)},
                                                       {"role": "user", "content": g.words(90)})))))

    a = g.toks(300)
    b = g.toks(2600)
    w.append(Workload("min-step", "§2.3 --checkpoint-min-step 1024: prompts shorter and longer than the step",
                      (S(a), S(a + g.toks(200)), S(a[:250]), S(b), S(b + g.toks(700)), S(b[:1500]),
                       S(b[:1400] + g.toks(100))), {"checkpoint_min_step": 1024}))

    chain = [g.toks(800)]
    for _ in range(7):
        chain.append(chain[-1] + g.toks(450))
    w.append(Workload("cap-pressure", "§3 FIFO and spacing eviction with --ctx-checkpoints 3",
                      tuple(S(p) for p in chain) + (S(chain[-1][:1500]), S(chain[-1][:3000]),
                                                    S(chain[3][:2000] + g.toks(300))),
                      {"ctx_checkpoints": 3, "checkpoint_min_step": 128}))

    x, y = g.toks(1800), g.toks(1600)
    x2, y2 = x + g.toks(400), y + g.toks(300)
    w.append(Workload("slots-np2", "§5 slot selection by common prefix / LRU with -np 2 (no id_slot)",
                      tuple(S(p, slot=None) for p in (x, y, x2, y2, x2[:1000] + g.toks(500), y2 + g.toks(50),
                                                      g.toks(900), x2[:2100])),
                      {"n_parallel": 2, "n_ctx": 8192}))

    sess = [g.toks(1200 + 150 * i) for i in range(6)]
    rounds = [p for p in sess] + [p + g.toks(200) for p in sess]
    w.append(Workload("slots-np4-cache-evict", "§5 -np 4 with a prompt cache small enough to evict "
                      "(--cache-ram 2)", tuple(S(p, slot=None) for p in rounds),
                      {"n_parallel": 4, "cache_ram_mib": 2, "n_ctx": 16384}))

    s1, s2 = g.toks(2000), g.toks(2200)
    alt = (s1, s2, s1 + g.toks(100), s2 + g.toks(100), s1[:1500], s2[:2150])
    w.append(Workload("cache-ram-on", "§5 one slot, two sessions alternating through the prompt cache",
                      tuple(S(p) for p in alt)))
    w.append(Workload("cache-ram-off", "§5 the same with --cache-ram 0: each switch re-processes",
                      tuple(S(p) for p in alt), {"cache_ram_mib": 0}))

    a = g.toks(2500)
    trunc = (S(a), S(a[:2400]), S(a[:2490]), S(a[:2300] + g.toks(120)), S(a[:1000]))
    w.append(Workload("batch-256-ub128", "§2.3 near-end checkpoint T-min(b, 4+ub) with -b 256 -ub 128",
                      trunc, {"n_batch": 256, "n_ubatch": 128}))
    w.append(Workload("batch-1024-ub64", "§2.3 near-end checkpoint with -b 1024 -ub 64",
                      trunc, {"n_batch": 1024, "n_ubatch": 64}))

    # Drawn last, so the workloads above keep the tokens they had on every earlier run. The slot
    # keeps the prompt and all but the last generated token (a request with n_predict 2 stops at
    # T + 1: "stop processing: n_tokens = T + 1"), and every answer token is 'a' (the bias), so a
    # prompt that repeats the kept answer shares the whole cache: n_past == L. That is the pure
    # extension of spec §2.2 (no search from #24110, b9509; b9231-b9508 search and restore an
    # older checkpoint, #23280) and, resent as is, n_past == T == L (before b9231 the failed
    # seq_rm re-processes everything; b9231+ restore below T).
    ans = lambda n_predict=2: (_OUT_TOKEN,) * (n_predict - 1)   # noqa: E731
    a = g.toks(1500)
    p2 = a + ans() + g.toks(500)
    p3 = p2 + ans() + g.toks(300)
    p4 = p3 + ans()                                  # the cache as it is: n_past == T == L
    p5 = p4 + ans() + g.toks(40)                     # a short extension, under every spacing
    p6 = p5 + ans(8) + g.toks(600)                   # (p5 was sent with n_predict 8)
    p7 = p6 + ans()[:0] + g.toks(200)                # the answer left out: n_past == T6 < L, a search
    w.append(Workload("extend-answer", "§2.2 pure extension with the answer kept (n_past == L: "
                      "#23280, #24110), the cache resent as is (n_past == T == L)",
                      (S(a), S(p2), S(p3), S(p4), S(p5, n_predict=8), S(p6), S(p7), S(p7 + ans() + g.toks(64)))))
    return w


def random_workload(seed: int, index: int) -> Workload:
    """A random request sequence and flag set (fits the tiny model's context), for --random."""
    rng = np.random.default_rng([seed, index])
    g = _Gen(int(rng.integers(1 << 31)))
    n_par = int(rng.choice([1, 1, 2]))
    nb = int(rng.choice([256, 512, 1024]))
    flags = {"n_parallel": n_par, "n_ctx": 4096 * n_par, "n_batch": nb,
             "n_ubatch": int(rng.choice([u for u in (64, 128, 256, 512) if u <= nb])),
             "ctx_checkpoints": int(rng.choice([2, 3, 4, 8])),
             "checkpoint_min_step": int(rng.choice([0, 128, 256, 1024])),
             "cache_ram_mib": int(rng.choice([0, 2, 8192]))}
    sessions: list[tuple[int, ...]] = []
    steps: list[Step] = []
    slot = None if n_par > 1 else 0
    for _ in range(int(rng.integers(6, 13))):
        op = rng.choice(["new", "extend", "extend", "truncate", "edit", "resend"]) if sessions else "new"
        if op == "new" or not sessions:
            p = g.toks(int(rng.integers(200, 3000)))
            sessions.append(p)
        else:
            j = int(rng.integers(len(sessions)))
            prev = sessions[j]
            if op == "extend":
                p = prev + g.toks(int(rng.integers(8, 800)))
            elif op == "truncate":
                p = prev[:int(rng.integers(50, len(prev)))]
            elif op == "edit":
                cut = int(rng.integers(10, len(prev)))
                p = prev[:cut] + g.toks(int(rng.integers(1, 900)))
            else:
                p = prev
            p = p[:3900]
            sessions[j] = p
        steps.append(Step(prompt=p, slot=slot))
    return Workload(f"random-{seed}-{index}", "random trace and flags (--random)", tuple(steps), flags)


def write_repro(wl: Workload, path: Path, note: str) -> None:
    """A reproducer: the flags and every request, as JSON (steps as token ids)."""
    doc = {"name": wl.name, "note": note, "flags": wl.flags,
           "steps": [{"prompt": list(st.prompt), "slot": st.slot, "n_predict": st.n_predict}
                     for st in wl.steps]}
    path.write_text(json.dumps(doc) + "\n")


def shrink(wl: Workload, still_fails, max_runs: int = 16) -> tuple[Workload, int]:
    """Drop requests one at a time, from the last, while ``still_fails(workload)`` stays true."""
    runs = 0
    steps = list(wl.steps)
    i = len(steps) - 1
    while i >= 0 and runs < max_runs and len(steps) > 1:
        trial = replace(wl, steps=tuple(steps[:i] + steps[i + 1:]))
        runs += 1
        if still_fails(trial):
            steps = list(trial.steps)
        i -= 1
    return replace(wl, steps=tuple(steps)), runs


# --- servers -----------------------------------------------------------------------------------

def xllamacpp_versions(python: str | None = None) -> list[str]:
    """Published xllamacpp versions, newest first (pip's own index query)."""
    done = subprocess.run([python or sys.executable, "-m", "pip", "index", "versions", "xllamacpp"],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"Available versions: (.+)", done.stdout)
    return [v.strip() for v in m.group(1).split(",")] if m else []


def xllamacpp_env(version: str, cache_dir: Path) -> str:
    """The python of a cached virtual environment holding ``xllamacpp==version`` (made on first use).

    Kept outside the user's environment, one per version, so builds can be compared side by side.
    """
    from .server import xllamacpp_version
    if version == xllamacpp_version():
        return sys.executable
    env = cache_dir / "xllamacpp" / version
    py = env / "bin" / "python"
    ok = env / ".installed"
    if ok.exists() and py.exists():
        return str(py)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True)
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", f"xllamacpp=={version}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        known = xllamacpp_versions(str(py))
        shutil.rmtree(env, ignore_errors=True)      # a half-made environment would look installed
        if known and version not in known:
            raise ValueError(f"--xllamacpp {version}: no such version; published: {', '.join(known)}")
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        raise RuntimeError(f"installing xllamacpp=={version} failed: {tail}")
    ok.write_text(version + "\n")
    return str(py)


def build_of_xllamacpp(version: str) -> str | None:
    """'2026.10.11549' -> 'b11549'; the 0.x series does not say (the log's wording dates it).

    The build is the third part (YEAR.MONTH.BUILD); a fourth is a re-release of the same build,
    e.g. 2026.4.8672.1, the rebuild of 2026.4.8672 that runs without AVX-512.
    """
    parts = version.split(".")
    if len(parts) in (3, 4) and all(x.isdigit() for x in parts) and int(parts[0]) >= 2000:
        return f"b{parts[2]}"
    return None


# --- running -----------------------------------------------------------------------------------

@dataclass
class WorkloadResult:
    """One workload's outcome: the validation counts, or the error that stopped it."""

    name: str
    rules: str
    flags: dict
    tasks: int = 0
    decisions: int = 0
    agreed: int = 0
    unknown: int = 0
    mismatches: list[dict] = field(default_factory=list)
    sent: int = 0
    error: str | None = None
    failed_answers: list[str] = field(default_factory=list)   # HTTP 5xx after the prompt was processed
    repro: str | None = None       # --random: the shrunk reproducer of a mismatch
    nothing_happened: int = 0      # known decisions where both sides did nothing (restored -1, none created ...)
    prompt_time: dict = field(default_factory=dict)
    arch: str = ""                 # the generated model's architecture ("" when one model was given)
    log_build: str | None = None   # the build the log prints (0.x wheels: the version does not say)

    def to_json(self) -> dict:
        d = {"name": self.name, "rules": self.rules, "flags": self.flags, "tasks": self.tasks,
             "decisions": self.decisions, "agreed": self.agreed, "unknown": self.unknown,
             "mismatches": self.mismatches, "requests_sent": self.sent,
             "nothing_happened": self.nothing_happened, "prompt_time": self.prompt_time,
             "failed_answers": self.failed_answers}
        if self.error:
            d["error"] = self.error
        if self.repro:
            d["repro"] = self.repro
        if self.arch:
            d["model_arch"] = self.arch
        return d


def _send_all(client: Client, wl: Workload, req_log: Path, on_step=None,
              failed: list[str] | None = None) -> int:
    failed = failed if failed is not None else []
    sent = 0
    with open(req_log, "a", encoding="utf-8") as f:
        for i, st in enumerate(wl.steps):
            path, body = st.body()
            t0 = time.monotonic()
            rec = {"workload": wl.name, "step": i, "endpoint": path, "body": body}
            try:
                resp = client.post(path, body)
            except ServerError as e:
                rec["error"] = str(e)
                f.write(json.dumps(rec) + "\n")
                if " answered HTTP 5" not in str(e):
                    raise
                # the server processed the prompt and failed only the answer: the log still holds
                # the task, so go on (the document lists the failed answers)
                failed.append(f"step {i}: {e}")
                sent += 1
                if on_step:
                    on_step()
                continue
            rec["wall_ms"] = round(1000 * (time.monotonic() - t0), 1)
            rec["timings"] = resp.get("timings")
            f.write(json.dumps(rec) + "\n")
            f.flush()
            sent += 1
            if on_step:
                on_step()
    return sent


def _is_nothing(d) -> bool:
    return d.logged in (-1, [], False, None, 0) and d.decision != "cache_n"


def _score(res: WorkloadResult, decisions: list, n_tasks: int, timings: list[dict]) -> None:
    from ..validate import _d_json
    res.tasks = n_tasks
    known = [d for d in decisions if d.status != "unknown"]
    res.decisions = len(known)
    res.agreed = sum(1 for d in known if d.status == "agreed")
    res.unknown = len(decisions) - len(known)
    res.mismatches = [_d_json(d) for d in known if d.status == "mismatch"]
    res.nothing_happened = sum(1 for d in known if d.status == "agreed" and _is_nothing(d))
    lg = sum(t["logged_ms"] for t in timings)
    pr = sum(t["predicted_ms"] for t in timings)
    res.prompt_time = {"logged_ms": round(lg, 1), "predicted_ms": round(pr, 1),
                       "error_pct": round(100 * (pr - lg) / lg, 1) if lg > 0 else None}


def run_matrix(workloads: list[Workload], out_dir: Path, *, backend: str, python: str | None,
               model: Path | list[tuple[str, Path]], build: str | None, profile: str | None = TINY_PROFILE,
               on_step=None, base_flags: dict | None = None, shrink_mismatches: bool = False) -> list[WorkloadResult]:
    """Each workload on a fresh server (its own flags and log); validate each log with ``build``.

    ``model``: a GGUF, or ``(architecture, GGUF)`` pairs in order of preference: a build that does
    not know the first architecture (its log says "unknown model architecture") gets the next
    one, from that workload on; when it knows none, the run stops there and says which it lacks.
    ``shrink_mismatches``: a workload with a mismatch is cut down to fewer requests that still
    disagree (each try on a fresh server), and the reproducer is written as ``NAME.repro.json``.
    """
    from .server import ServerFlags
    base = ServerFlags(**{"n_ctx": 8192, "n_batch": 512, "n_ubatch": 512, "ctx_checkpoints": 8,
                          "checkpoint_min_step": 256, "cache_ram_mib": 8192, **(base_flags or {})})
    models = [("", model)] if isinstance(model, Path) else list(model)
    tried: list[str] = []
    run = lambda wl, tag, step=None: _run_one(wl, tag, out_dir, base, backend, python,  # noqa: E731
                                              models[0][1], build, profile, step)
    results: list[WorkloadResult] = []
    for wl in workloads:
        res = run(wl, wl.name, on_step)
        while res.error and res.sent == 0 and (unknown := unknown_architecture(out_dir / f"{wl.name}.server.log")):
            tried.append(unknown)
            models = [m for m in models[1:] if m[0] not in tried]
            if not models:
                known = "; ".join(_ARCH_SUPPORT[a] for a in tried if a in _ARCH_SUPPORT)
                res.error = (f"server failed in workload {wl.name}: this build cannot load the generated models: "
                             f"it knows none of the architectures {', '.join(tried)} (it needs one of them"
                             + (f"; {known})" if known else ")"))
                return results + [res]
            res = run(wl, wl.name, on_step)
        if models[0][0]:
            res.arch = models[0][0]
        if shrink_mismatches and res.mismatches and not res.error:
            small, n_runs = shrink(wl, lambda t: bool(run(t, wl.name + ".shrunk").mismatches))
            final = run(small, wl.name + ".shrunk")
            note = (f"{len(small.steps)} of {len(wl.steps)} requests still disagree after {n_runs} tries "
                    f"(log {wl.name}.shrunk.server.log): {final.mismatches[:3]}")
            write_repro(small, out_dir / f"{wl.name}.repro.json", note)
            res.repro = str(out_dir / f"{wl.name}.repro.json")
        results.append(res)
    return results


def _run_one(wl: Workload, tag: str, out_dir: Path, base, backend: str, python: str | None, model: Path,
             build: str | None, profile: str | None, on_step=None) -> WorkloadResult:
    from ..validate import validate_log
    from .server import LiveServer
    flags = replace(base, **wl.flags)
    log = out_dir / f"{tag}.server.log"
    res = WorkloadResult(wl.name, wl.rules, {k: v for k, v in vars(flags).items() if k != "verbosity"})
    for p in (log, out_dir / f"{tag}.requests.jsonl"):
        if p.exists():
            p.unlink()           # the output folder was checked to be new or --force'd
    try:
        with LiveServer(model, log, flags, backend=backend, python=python) as srv:
            res.sent = _send_all(Client(srv.url, timeout_s=300), wl, out_dir / f"{tag}.requests.jsonl",
                                 on_step, res.failed_answers)
    except (ServerError, RuntimeError, OSError) as e:
        res.error = f"server failed in workload {wl.name}: {_why(e, log)}"
    if log.exists():
        try:
            v = validate_log(log, version=build, profile=profile)
            _score(res, v.decisions, v.n_tasks, v.timings)
            m = re.search(r"version=(b\d+)", v.policy)
            if build is None and m and not v.build_range:       # printed, not dated by wording
                res.log_build = m.group(1)
        except ValueError as e:
            res.error = (res.error + "; " if res.error else "") + f"validation failed: {e}"
    return res


# where each generated architecture was seen to load (docs/conformance.md, the 0.x wheels)
_ARCH_SUPPORT = {"qwen35": "qwen35 loads in b8156 and not in b7964",
                 "lfm2": "lfm2 loads in b6628 and later, and builds before b6685 have no hybrid checkpoints"}


def unknown_architecture(log: Path) -> str | None:
    """The architecture a server log says its build does not know, if it says so."""
    try:
        m = re.search(r"unknown model architecture: '([^']+)'", log.read_text(errors="replace"))
    except OSError:
        return None
    return m.group(1) if m else None


# llama.cpp's own fatal checks: GGML_ASSERT / GGML_ABORT print "FILE:LINE: message" and abort
_ABORT = re.compile(r"([\w./-]+\.(?:cpp|c|h):\d+): ((?:GGML_ASSERT\(.*\) failed|.*GGML_ABORT.*|[^\n]*abort[^\n]*))")


def server_abort(log: Path) -> str | None:
    """The assertion or abort a server log ends with, as "file.cpp:LINE: message (log line N)"."""
    from ..ingest.llama_log import LogError, open_log
    try:
        stream, close = open_log(log)           # plain or gzipped, as every other log reader
    except LogError:
        return None
    try:
        for i, raw in enumerate(stream, 1):
            line = raw.decode(errors="replace")
            m = _ABORT.search(line)
            if m and "set_abort_callback" not in line:
                return f"{Path(m.group(1)).name}: {m.group(2).strip()} (log line {i})"
    except (OSError, EOFError):
        return None
    finally:
        close()
    return None


def _why(e: Exception, log: Path) -> str:
    """The error, and what the log says: a model this build cannot load, or the server's own
    assertion (b7079 and b7376 abort on a resend of the whole cache, docs/conformance.md)."""
    arch = unknown_architecture(log)
    if arch:
        return (f"this build cannot load the generated model: it does not know architecture "
                f"'{arch}' (builds older than its support in llama.cpp cannot run it)")
    abort = server_abort(log)
    if abort:
        return f"the server aborted: {abort}; the request then failed: {e}"
    return str(e)


def run_on_url(workloads: list[Workload], out_dir: Path, url: str, log: Path, build: str | None,
               profile: str | None = None, on_step=None) -> list[WorkloadResult]:
    """The workloads that need no flags of their own, all on one running server; its log is
    validated whole (earlier tasks included, since they set the slot's state) and the last
    requests' decisions are attributed to the workloads in the order they were sent."""
    from ..validate import validate_log
    client = Client(url, timeout_s=300)
    spans: list[tuple[WorkloadResult, int]] = []
    for wl in workloads:
        if wl.flags:
            continue                 # needs server flags we cannot set on the user's server
        res = WorkloadResult(wl.name, wl.rules, {"server": url})
        try:
            res.sent = _send_all(client, wl, out_dir / f"{wl.name}.requests.jsonl", on_step,
                                 res.failed_answers)
        except ServerError as e:
            res.error = f"server failed in workload {wl.name}: {e}"
        spans.append((res, res.sent))
        if res.error:
            break
    time.sleep(0.5)                  # the server writes the last task's lines after answering
    v = validate_log(log, version=build, profile=profile)
    by_req: dict[int, list] = {}
    for d in v.decisions:
        by_req.setdefault(d.request, []).append(d)
    n_req = 1 + max(by_req, default=-1)
    rid = n_req - sum(n for _, n in spans)
    for res, n in spans:
        _score(res, [d for r in range(rid, rid + n) for d in by_req.get(r, [])], n, [])
        rid += n
    return [r for r, _ in spans]


def summary(results: list[WorkloadResult], build: str | None, server: str) -> dict:
    """The ``--json`` document (issue 11's shape)."""
    dec = sum(r.decisions for r in results)
    agr = sum(r.agreed for r in results)
    build = build or next((r.log_build for r in results if r.log_build), None)
    return {"build": build or "unknown", "server": server,
            "workloads": [r.to_json() for r in results],
            "tasks": sum(r.tasks for r in results), "decisions": dec, "agreed": agr,
            "agreement": agr / dec if dec else None, "unknown": sum(r.unknown for r in results),
            "nothing_happened": sum(r.nothing_happened for r in results),
            "mismatches": [dict(m, workload=r.name) for r in results for m in r.mismatches],
            "errors": [r.error for r in results if r.error]}


def cross_validate(out_dir: Path, versions: list[str], profile: str | None = TINY_PROFILE) -> dict[str, dict]:
    """Replay a finished run's logs (``out_dir``/*.server.log) under other builds' rules.

    Which rule groups agree with a build's own logs brackets the build boundaries that wording
    cannot date (e.g. #28302): a build agrees with the rules it has and not with the others.
    """
    from ..validate import validate_log
    logs = sorted(p for p in out_dir.glob("*.server.log") if ".shrunk." not in p.name)
    out: dict[str, dict] = {}
    for v in versions:
        agreed = known = unknown = nothing = 0
        first: dict | None = None
        timings: list[dict] = []
        for log in logs:
            val = validate_log(log, version=v, profile=profile)
            timings += val.timings
            known += len(val.known)
            agreed += val.agreed
            nothing += sum(1 for d in val.known if d.status == "agreed" and _is_nothing(d))
            unknown += len(val.decisions) - len(val.known)
            if first is None:
                bad = next((d for d in val.decisions if d.status == "mismatch"), None)
                if bad is not None:
                    first = {"log": log.name, "task": bad.task, "decision": bad.decision, "line": bad.line,
                             "logged": bad.logged, "simulated": bad.simulated}
        out[v] = {"agreed": agreed, "decisions": known, "unknown": unknown, "first_mismatch": first,
                  "nothing_happened": nothing, "timing": own_timing_fit(timings)}
    return out


def own_timing_fit(timings: list[dict]) -> dict:
    """Prompt time of a build from its own logs: ``ms = a * prompt_n + c`` fitted on every other
    task, the total of the rest predicted (held out). Builds compared on the same matrix and
    machine show their speed changes in ``a`` (ms per prompt token) and ``tok_s``."""
    rows = [(t["prompt_n"], t["logged_ms"]) for t in timings if t.get("prompt_n") and t.get("logged_ms")]
    if len(rows) < 6:
        return {}
    fit, held = rows[0::2], rows[1::2]
    X = np.array([[n, 1.0] for n, _ in fit])
    y = np.array([ms for _, ms in fit])
    (a, c), *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = sum(a * n + c for n, _ in held)
    meas = sum(ms for _, ms in held)
    n_tok = sum(n for n, _ in rows)
    return {"ms_per_token": round(float(a), 4), "ms_per_request": round(float(c), 2),
            "tok_s": round(n_tok / (sum(ms for _, ms in rows) / 1000.0), 1),
            "heldout_error_pct": round(100.0 * (pred - meas) / meas, 1) if meas > 0 else None,
            "n_tasks": len(rows)}
