"""Fit a :class:`ckptsim.cost.CostProfile` to harness measurements, and check it on held-out ones.

Each measured request prefilled positions [cache_n, T) (``n = prompt_n`` tokens) in some number
of decode calls, possibly after restoring a checkpoint, creating checkpoints on the way. Its
``prompt_ms`` (which in the server spans the restore, the batches and the checkpoint copies) is
modelled as::

    prompt_ms = a*n + b*n*(cache_n + T - 1)/2000 + c*n_batches + r*restored + w*n_created

with a, b, c, r, w >= 0 fitted by ``scipy.optimize.least_squares`` on every pass of the plan but
the last, which is held out. A checkpoint's size does not depend on the position (spec §4), so
one model gives one size and ``r``/``w`` become ``restore_ms_fixed``/``create_ms_fixed`` (the
per-MiB parts stay 0). With the server log (``--log``) the batch count, restores and creations are
read per request from it; without it they follow the server's rules (spec §2.2-§2.3).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cost import CostProfile
from .harness import list_runs, read_measurements

FEATURES = ("prefill_ms_per_token", "prefill_ms_per_token_per_ktok", "prefill_ms_per_batch",
            "prefill_ms_per_ubatch", "restore_ms_fixed", "create_ms_fixed")


@dataclass
class TaskLog:
    """What the server log says about one completion task."""

    task: int
    n_batches: int = 0
    created: list[int] = field(default_factory=list)
    restored: int = -1
    full_reprocess: bool = False
    prompt_tokens: int = -1
    prompt_ms: float = -1.0


@dataclass
class ServerLog:
    """Facts parsed from a ``-lv 4`` server log: tasks in launch order, sizes, build."""

    tasks: list[TaskLog]
    ckpt_mib: float | None
    state_points: list[tuple[int, float]]    # (prompt length, full state MiB) of prompt-cache saves
    build: str | None
    ctx_checkpoints: int | None = None       # from "context checkpoints enabled, max = %d, ..."
    checkpoint_min_step: int | None = None
    n_batch: int | None = None               # llama_context's n_batch / n_ubatch lines
    n_ubatch: int | None = None
    cache_ram_mib: int | None = None         # "prompt cache is enabled, size limit: N MiB"


def parse_server_log(path: str | Path) -> ServerLog:
    """The facts calibration needs from a llama-server log, read by the project's log parser
    (``ingest.llama_log``, spec §6 formats of every build)."""
    from ..ingest.llama_log import FactKind, LogStats, iter_facts
    tasks: dict[int, TaskLog] = {}
    sizes: list[float] = []
    states: list[tuple[int, float]] = []
    stats = LogStats()
    for fact in iter_facts(path, stats):
        k, v = fact.kind, fact.v
        if k is FactKind.CACHE_SAVE:
            states.append((int(v["n_tokens"]), float(v["size_mib"])))
            continue
        if k is FactKind.TASK_START:
            tasks[fact.task] = TaskLog(fact.task)
            continue
        tl = tasks.get(fact.task)
        if tl is None:
            continue
        if k is FactKind.SEQ_RM:
            tl.n_batches += 1                 # printed once per batch of the prompt
        elif k is FactKind.CREATED:
            tl.created.append(int(v["n_tokens"]))
            if "size_mib" in v:
                sizes.append(float(v["size_mib"]))
        elif k is FactKind.RESTORED:
            tl.restored = int(v["n_tokens"])
        elif k is FactKind.FULL_REPROCESS:
            tl.full_reprocess = True
        elif k is FactKind.TIMING_PROMPT:
            tl.prompt_ms, tl.prompt_tokens = float(v["ms"]), int(v["n_tokens"])
    st = stats.settings
    build = st.get("build_info") or (f"b{st['build']}" if "build" in st else None)
    return ServerLog(list(tasks.values()), float(np.median(sizes)) if sizes else None, states, build,
                     st.get("ctx_checkpoints"), st.get("min_step"), st.get("n_batch"), st.get("n_ubatch"),
                     st.get("cache_ram_mib"))


def rule_features(rec: dict, n_batch: int, n_ubatch: int) -> tuple[int, int, bool, int]:
    """(n_batches, n_ubatches, restored, n_created) of one request from the server's rules, without a log.

    Batches end at n_batch tokens and at the break points T-min(b, 4+ub) and T-4 (spec §2.3); a
    restore happened when the server searched (the cache was not a prefix of the prompt, or the
    prompt was fully cached) and still reused tokens (spec §2.2).
    """
    from ..server import batch_counts

    start, T = rec["cache_n"], rec["n_prompt"]
    breaks = (T - min(n_batch, 4 + n_ubatch), T - min(n_batch, 4))
    nb, nub = batch_counts(start, T, n_batch, n_ubatch, breaks)
    lcp, L = rec["lcp_cache"], rec["cache_len_before"]
    searched = lcp > 0 and not (lcp < T and lcp == L)
    restored = searched and start > 0
    created = sum(1 for k in set(breaks) if start < k < T)
    if start > 0 and T - start <= min(n_batch, 4 + n_ubatch) and start not in breaks:
        created += 1        # the first batch is near the end: a checkpoint at its start
    return nb, nub, restored, created


@dataclass
class Fit:
    """A fitted profile and how well it explains the measurements."""

    profile: CostProfile
    coef: dict[str, float]
    fit_rows: list[dict]
    heldout_rows: list[dict]
    used_log: bool
    notes: list[str]

    def heldout_summary(self) -> dict:
        """Totals and errors over the held-out pass."""
        return _summary(self.heldout_rows)

    def fit_summary(self) -> dict:
        """Totals and errors over the fitted passes."""
        return _summary(self.fit_rows)


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    y = np.array([r["measured_ms"] for r in rows])
    p = np.array([r["predicted_ms"] for r in rows])
    tot_y, tot_p = float(y.sum()), float(p.sum())
    big = y >= 20.0
    return {"n": len(rows), "total_measured_ms": round(tot_y, 2), "total_predicted_ms": round(tot_p, 2),
            "total_error_pct": round(100.0 * (tot_p - tot_y) / tot_y, 2) if tot_y else None,
            "rms_residual_ms": round(float(np.sqrt(np.mean((p - y) ** 2))), 3),
            "median_abs_error_pct_ge20ms": round(float(np.median(np.abs(p[big] - y[big]) / y[big]) * 100), 2)
            if big.any() else None}


def _rows(recs: list[dict], log: ServerLog | None, n_batch: int, n_ubatch: int) -> tuple[list[dict], bool, list[str]]:
    notes: list[str] = []
    used_log = False
    tasks: list[TaskLog] | None = None
    if log is not None:
        # Requests are sent one at a time, so the k-th launched task is the k-th request.
        if len(log.tasks) >= len(recs) and all(
                t.prompt_tokens in (-1, r["prompt_n"]) for t, r in zip(log.tasks[-len(recs):], recs)):
            tasks = log.tasks[-len(recs):]
            used_log = True
        else:
            notes.append("server log does not match the measurements (other traffic?); "
                         "batches/restores/creations follow the server's rules instead")
    rows = []
    for i, r in enumerate(recs):
        if r.get("endpoint") != "/completion" or r.get("prompt_n", 0) < 1 or r.get("prompt_ms", -1) < 0:
            continue
        # The log does not print ubatches; their count follows from the batch geometry (spec §2.3).
        nb, nub, restored, created = rule_features(r, n_batch, n_ubatch)
        full = r["cache_n"] == 0 and r["lcp_cache"] > 0
        if tasks is not None:
            t = tasks[i]
            nb, restored, created = t.n_batches, t.restored >= 0, len(t.created)
            full = t.full_reprocess
        n, s, T = r["prompt_n"], r["cache_n"], r["n_prompt"]
        rows.append({"seq": r["seq"], "phase": r["phase"], "pass": r["pass"], "n_prompt": T,
                     "cache_n": s, "prompt_n": n, "measured_ms": r["prompt_ms"],
                     "x": [n, n * (s + T - 1) / 2000.0, nb, nub, float(restored), float(created)],
                     "restored": bool(restored), "full_reprocess": bool(full), "n_created": created,
                     "n_batches": nb, "n_ubatches": nub, "n_ubatch": n_ubatch})
    return rows, used_log, notes


def run_ids_of(measurements: str | Path, run_id: str | None = None) -> list[str]:
    """The runs ``run_id`` names: one id, a comma list, "all", or None for the last run."""
    order = list_runs(measurements)
    if run_id in (None, ""):
        return order[-1:]
    if run_id == "all":
        return order
    ids = [x.strip() for x in run_id.split(",") if x.strip()]
    missing = [x for x in ids if x not in order]
    if missing:
        raise ValueError(f"{measurements}: no run {', '.join(missing)} (runs: {', '.join(order)})")
    return ids


def fit_profile(measurements: str | Path, log: str | Path | None = None, run_id: str | None = None,
                name: str | None = None, ckpt_size_mib: float | None = None,
                logs: dict[str, str | Path] | None = None) -> Fit:
    """Fit the cost model to runs of a measurements file; each run's last pass is held out.

    ``run_id``: one run (default: the last), a comma list or "all". Several runs of one model at
    different ``-b``/``-ub`` separate the per-ubatch cost from the per-batch and per-token costs;
    ``logs`` maps run ids to their server logs (``log`` serves a single run).
    """
    from scipy.optimize import least_squares

    ids = run_ids_of(measurements, run_id)
    rows: list[dict] = []
    notes: list[str] = []
    all_recs: list[dict] = []
    used_log = False
    slog = None
    n_batches_of: set[int] = set()
    for rid in ids:
        header_r, recs = read_measurements(measurements, rid)
        n_batches_of.add(int(header_r["n_batch"]))
        path = (logs or {}).get(rid) or (log if len(ids) == 1 else None) or _log_beside(measurements, header_r)
        slog_r = parse_server_log(path) if path else None
        slog = slog or slog_r
        rows_r, used_r, notes_r = _rows(recs, slog_r, int(header_r["n_batch"]), int(header_r["n_ubatch"]))
        passes = sorted({r["pass"] for r in rows_r if r["pass"] >= 0})
        held = passes[-1] if len(passes) > 1 else None
        if held is None:
            notes.append(f"run {rid}: a single pass, no held-out measurements (run the plan with passes >= 2)")
        for r in rows_r:
            r["run"], r["held_out"] = rid, held is not None and r["pass"] == held
        rows += rows_r
        notes += notes_r
        all_recs += recs
        used_log = used_log or used_r
    header = header_r                       # provenance: the newest run's server, model, machine
    if not any(r["pass"] >= 0 for r in rows):
        raise ValueError(f"{measurements}: run {', '.join(ids)} has no measured passes to fit")
    fit_rows = [r for r in rows if r["phase"] != "warmup" and not r["held_out"]]
    held_rows = [r for r in rows if r["held_out"]]
    if len(fit_rows) < len(FEATURES) + 2:
        raise ValueError(f"{measurements}: only {len(fit_rows)} usable measurements; too few to fit")
    X = np.array([r["x"] for r in fit_rows], float)
    y = np.array([r["measured_ms"] for r in fit_rows], float)
    # Weights ~ 1/sqrt(y): timing noise grows with duration, and the short requests (hits,
    # restores) must still pin down the per-batch and per-restore terms.
    w = 1.0 / np.sqrt(np.maximum(y, 1.0))
    cols = np.flatnonzero(X.any(axis=0))          # a feature never seen cannot be fitted
    i_b, i_ub = FEATURES.index("prefill_ms_per_batch"), FEATURES.index("prefill_ms_per_ubatch")
    if np.array_equal(X[:, i_b], X[:, i_ub]):
        # -b == -ub: every batch is one ubatch, and the two costs are one column. Keep it as
        # the per-batch cost (what the fit measured) and say how to separate them.
        cols = cols[cols != i_ub]
        notes.append("prefill_ms_per_ubatch: every batch was one ubatch (-b == -ub), so it cannot be "
                     "told apart from prefill_ms_per_batch; left at 0 (calibrate at several -ub, "
                     "--ubatch-sizes, to separate them)")
    res = least_squares(lambda c: (X[:, cols] @ c - y) * w, x0=np.full(len(cols), 0.01),
                        bounds=(0.0, np.inf), loss="soft_l1", f_scale=2.0)
    coef = np.zeros(len(FEATURES))
    coef[cols] = res.x
    for j in set(range(len(FEATURES))) - set(cols.tolist()) - {i_ub}:
        notes.append(f"{FEATURES[j]}: no measurement exercised it; left at 0")
    for r in rows:
        r["predicted_ms"] = float(np.dot(coef, r["x"]))
    decode = _fit_decode(all_recs)
    size, kv, size_src = _sizes(header, slog, ckpt_size_mib)
    notes.append(f"checkpoint size from {size_src}")
    hw = header.get("hardware", {})

    def one_or_all(v: set[int]) -> int | list[int]:
        return next(iter(v)) if len(v) == 1 else sorted(v)

    prov = {
        "kind": "fitted by ckptsim calibrate",
        "server_build": _server_build(header, slog),
        "model": Path(header.get("model_path") or "unknown").name,
        "model_shape": header.get("flags", {}).get("model_shape"),
        "n_ctx": header.get("n_ctx"), "n_batch": one_or_all(n_batches_of),
        "n_ubatch": one_or_all({r["n_ubatch"] for r in rows}),
        "server_flags": header.get("flags", {}).get("server_args"),
        "hardware": hw, "date": header.get("date"),
        "measurements": {"file": Path(measurements).name, "run": ",".join(ids),
                         "n_requests": len(all_recs), "n_fit": len(fit_rows), "n_heldout": len(held_rows),
                         "held_out": "the last pass of each run"},
        "features_from": "server log (-lv 4)" if used_log else "server rules (no log)",
        "fit": {"method": "scipy.optimize.least_squares, bounds >= 0, soft_l1, weights 1/sqrt(ms)",
                "model": "prompt_ms = a*n + b*n*(cache_n+T-1)/2000 + c*n_batches + u*n_ubatches"
                         " + r*restored + w*n_created",
                **{k: round(float(v), 6) for k, v in zip(FEATURES, coef)},
                "fit": _summary(fit_rows), "heldout": _summary(held_rows)},
        "notes": notes,
    }
    profile = CostProfile(
        name=name or f"{Path(header.get('model_path') or 'model').stem}-calibrated",
        **{k: float(v) for k, v in zip(FEATURES, coef)}, decode_ms_per_token=decode[0],
        decode_ms_per_token_per_ktok=decode[1], ckpt_size_mib=size, kv_mib_per_ktok=kv,
        provenance=prov)
    return Fit(profile, dict(zip(FEATURES, map(float, coef))), fit_rows, held_rows, used_log, notes)


def _log_beside(measurements: str | Path, header: dict) -> Path | None:
    """A run's server log found next to its measurements file (as committed, maybe gzipped), if any.

    The run header records where the log was written; a refit elsewhere (another machine, the
    repository) finds it by name, so ``--refit --run all`` uses every run's own log.
    """
    name = Path(str(header.get("server_log") or "")).name
    if not name:
        return None
    for cand in (Path(measurements).parent / name, Path(measurements).parent / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _server_build(header: dict, slog) -> str:
    """The build that served a run: its log's build line, else what the backend or /props said."""
    if slog is not None and slog.build and not slog.build.startswith("b0"):
        return slog.build
    for v in (header.get("flags", {}).get("backend_build"), header.get("build")):
        if v and v != "unknown" and not str(v).startswith("b0"):
            return str(v)
    return "unknown"


def _fit_decode(recs: list[dict]) -> tuple[float, float]:
    """decode_ms_per_token and its growth per 1000 positions, from the 'decode' requests."""
    from scipy.optimize import least_squares

    pts = [(r["n_prompt"], r["predicted_n"], r["predicted_ms"]) for r in recs
           if r.get("phase") == "decode" and r.get("predicted_n", 0) > 1 and r.get("predicted_ms", 0) > 0]
    if not pts:
        return 0.0, 0.0
    A = np.array([[n, n * (2 * s + n - 1) / 2000.0] for s, n, _ in pts], float)
    y = np.array([ms for *_, ms in pts], float)
    res = least_squares(lambda c: A @ c - y, x0=[0.1, 0.0], bounds=(0.0, np.inf))
    return float(res.x[0]), float(res.x[1])


def _sizes(header: dict, slog: ServerLog | None, given: float | None) -> tuple[float, float, str]:
    """(checkpoint MiB, KV MiB per 1000 tokens, where the size came from)."""
    shape = None
    mp = header.get("model_path")
    if mp and Path(mp).is_file():
        from .tinymodel import model_shape_of
        shape = model_shape_of(mp)
    kv = shape.kv_mib_per_ktok() if shape else 0.0
    if given is not None:
        size, src = float(given), "the --ckpt-size-mib option"
    elif slog is not None and slog.ckpt_mib is not None:
        size, src = slog.ckpt_mib, "the server log ('size = ... MiB')"
    elif shape is not None:
        size, src = shape.ckpt_mib(), f"the model's metadata ({Path(mp).name}, spec §4 formula)"
    else:
        size, src = 0.0, "nowhere: no log and the model file (from /props) is not readable here; set to 0"
    if slog is not None and slog.state_points and size:
        # prompt-cache saves report the full state (attention KV + recurrent): the KV part per token
        per = [(mib - size) / n * 1000.0 for n, mib in slog.state_points if n >= 256]
        if per:
            kv = float(np.median(per))
    return round(size, 6), round(kv, 6), src


def trace_from_measurements(measurements: str | Path, run_id: str | None = None):
    """The exact request sequence a harness run sent, as a ckptsim Trace (chat requests left out)."""
    from ..records import Request
    from ..trace import Trace, TraceHeader

    header, recs = read_measurements(measurements, run_id)
    reqs = []
    for r in recs:
        if r.get("endpoint") != "/completion" or r.get("seq") is None:
            continue
        if r["seq"] != len(reqs):
            raise ValueError(f"{measurements}: run {header['run']} is missing request {len(reqs)}")
        reqs.append(Request(id=r["seq"], session="harness", t_s=float(r["t_s"]), n_prompt=r["n_prompt"],
                            n_output=max(1, int(r.get("predicted_n", 1))), parent=r["parent"],
                            n_shared=r["n_shared"],
                            observed={"cache_n": r["cache_n"], "prompt_n": r["prompt_n"],
                                      "prompt_ms": r["prompt_ms"]}))
    th = TraceHeader(name=f"harness-{header['run']}", source=f"ckptsim calibrate ({Path(measurements).name})",
                     tokenizer=Path(header.get("model_path") or "").name,
                     notes="request sequence sent by the live harness; obs = measured timings")
    return Trace(th, reqs)


def validate_with_simulator(measurements: str | Path, profile: CostProfile, run_id: str | None = None) -> dict:
    """Replay the harness's requests in the simulator; predicted vs measured prompt time per request.

    The simulator decides cache_n, restores and checkpoint placement itself (the llama-server
    policy of the run's build and flags), so this checks the rules and the costs together.
    ``run_id`` as in ``fit_profile``: each run is replayed under its own server flags.
    """
    rows: list[dict] = []
    configs: list[dict] = []
    policy = ""
    for rid in run_ids_of(measurements, run_id):
        policy, cfg, rows_r = _replay_run(measurements, profile, rid)
        configs.append(cfg)
        rows += rows_r
    held_rows = [r for r in rows if r["held_out"]]
    same = sum(1 for r in rows if r["cache_n_measured"] == r["cache_n_predicted"])
    return {"policy": policy, "config": configs[0] if len(configs) == 1 else configs,
            "n_requests": len(rows), "cache_n_agree": same,
            "all": _summary(rows), "heldout": _summary(held_rows), "held_out_pass": "last of each run",
            "rows": rows}


def _replay_run(measurements: str | Path, profile: CostProfile, rid: str) -> tuple[str, dict, list[dict]]:
    from ..sim import ServerConfig, simulate

    header, recs = read_measurements(measurements, rid)
    trace = trace_from_measurements(measurements, rid)
    flags = header.get("flags", {})
    m = re.match(r"b(\d+)", _server_build(header, None))
    build = f"b{m.group(1)}" if m and m.group(1) != "0" else "latest"
    cfg = ServerConfig(n_slots=1, n_ctx=int(header["n_ctx"]), n_batch=int(header["n_batch"]),
                       n_ubatch=int(header["n_ubatch"]),
                       ctx_checkpoints=int(flags.get("ctx_checkpoints", 32)),
                       cache_ram_mib=float(flags.get("cache_ram_mib", 8192)))
    policy = f"llama-server:version={build},min_step={int(flags.get('checkpoint_min_step', 8192))}"
    run = simulate(trace, policy, cfg, profile, record_events=False)
    passes = {r["seq"]: r["pass"] for r in recs if r.get("seq") is not None}
    held = max((p for p in passes.values() if p >= 0), default=None)
    rows = []
    served = {res.request_id: res for res in run.results}
    for req in trace:
        res = served[req.id]
        obs = req.observed or {}
        rows.append({"run": rid, "seq": req.id, "pass": passes.get(req.id),
                     "held_out": held is not None and passes.get(req.id) == held, "n_prompt": req.n_prompt,
                     "cache_n_measured": obs.get("cache_n"), "cache_n_predicted": res.n_cached,
                     "measured_ms": obs.get("prompt_ms"),
                     "predicted_ms": round(res.prefill_ms + res.restore_ms + res.create_ms, 3)})
    return policy, {"n_ctx": cfg.n_ctx, "n_batch": cfg.n_batch, "n_ubatch": cfg.n_ubatch,
                    "ctx_checkpoints": cfg.ctx_checkpoints}, rows
