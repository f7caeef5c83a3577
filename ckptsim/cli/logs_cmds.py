"""``ckptsim parse LOG... -o TRACE`` and ``ckptsim validate LOG``: replay real llama-server logs."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ._app import (EXIT_FAILED, UserError, app, check_batches, check_cache_ram, check_profile, cli_errors, err,
                   out, print_json, progress)
from ._tables import Col, show_table
from .sim_cmds import WideOpt


def _size(path: str) -> int | None:
    p = Path(path)
    return p.stat().st_size if path != "-" and p.is_file() and not path.endswith(".gz") else None


def _read(path: str, show: bool):
    """Parse one log into a LogTrace, with a progress bar over its bytes."""
    from ..ingest.log_trace import trace_from_log
    size = _size(path)
    # small logs read in a blink; a bar only for big files (or .gz, whose size is unknown)
    show = show and path != "-" and (size is None or size > 16 << 20)
    with progress(enabled=show) as bar:
        task = bar.add_task(f"reading {Path(path).name}", total=size)
        return trace_from_log(path, on_bytes=lambda n: bar.advance(task, n))


def _warn(lt, quiet: bool) -> None:
    s = lt.log.stats
    if quiet:
        return
    for i in s.issues[:10]:
        err.print(f"[yellow]warning:[/] {s.path}:{i.line}: {i.message}", highlight=False)
    if s.malformed > 10:
        err.print(f"[yellow]warning:[/] {s.malformed - 10} more malformed lines", highlight=False)
    if s.truncated_last_line:
        used = "; its fields before the cut were read" if s.cut_line_used else ""
        err.print(f"[yellow]warning:[/] {s.path}: the last line is cut off (an excerpt?){used}", highlight=False)
    if s.binary:
        err.print(f"[yellow]warning:[/] {s.path}: {s.binary} binary / non-UTF-8 lines skipped", highlight=False)


def _summary(lt) -> dict:
    from ..ingest.log_trace import build_range_text
    s = lt.log.stats
    ev = Counter()
    # from every task the log shows, the ones left out of the trace (no prompt length) included
    for t in lt.log.tasks:
        ev["created"] += len(t.created)
        for k, _, _ in t.erased:
            ev[k] += 1
        for k, _, _ in t.cache:
            ev[k] += 1
        ev["restored"] += t.restored >= 0
        ev["full_reprocess"] += bool(t.full_reprocess)
    ev = Counter({k: v for k, v in ev.items() if v})
    return {"log": s.path, "lines": s.lines, "known_lines": s.known, "unknown_lines": s.unknown,
            "malformed_lines": s.malformed, "binary_lines": s.binary,
            "truncated_last_line": s.truncated_last_line,
            "cut_line_used": s.cut_line_used,
            "issues": [{"line": i.line, "kind": i.kind, "message": i.message} for i in s.issues],
            "prefixes": sorted(s.prefixes), "tasks": len(lt.log.tasks), "requests": len(lt.requests),
            "left_out": lt.left_out, "events": dict(ev), "settings": lt.log.settings,
            "settings_evidence": lt.log.evidence,
            "fork": ({"name": s.fork, "line": s.fork_line, "modelled": False} if s.fork else None),
            "build": lt.log.build, "build_printed": bool(lt.log.settings.get("build")),
            "build_range": [lt.log.build_lo, lt.log.build_hi],
            "build_wording": build_range_text(lt.log.build_lo, lt.log.build_hi, lt.log.build_evidence),
            "build_evidence": lt.log.build_evidence,
            "checkpoint_lines_visible": lt.log.visible}


def _concat(traces: list) -> tuple:
    """Several logs in one trace: ids and parents shifted, each log after the previous one."""
    from ..trace import TraceHeader
    reqs, metas, t_off = [], [], 0.0
    for i, lt in enumerate(traces):
        base = len(reqs)
        for r in lt.requests:
            reqs.append(dataclasses.replace(
                r, id=r.id + base, parent=r.parent + base if r.parent >= 0 else -1,
                session=f"{i}:{r.session}" if len(traces) > 1 else r.session, t_s=r.t_s + t_off))
        if reqs:
            t_off = reqs[-1].t_s + 1.0
        metas.append(lt.header.meta)
    if len(traces) == 1:
        return traces[0].header, reqs
    h = traces[0].header
    return TraceHeader(name=h.name, source="llama-server logs " + ", ".join(
        lt.header.source.removeprefix("llama-server log ") for lt in traces), derived=True,
        notes=h.notes, meta={"logs": metas}), reqs


@app.command("parse")
@cli_errors
def parse_cmd(logs: list[str] = typer.Argument(..., metavar="LOG...",
                                               help="llama-server log(s): text, .gz, or - for stdin."),
              output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                    help="Write the trace here (.jsonl or .jsonl.gz)."),
              name: Optional[str] = typer.Option(None, "--name", help="Trace name (default: the log's)."),
              force: bool = typer.Option(False, "--force", help="Overwrite the output file."),
              wide: bool = WideOpt,
              as_json: bool = typer.Option(False, "--json", help="Print one JSON document and nothing else.")):
    """Read llama-server logs (any build, any prefix) into a trace plus the events the server logged."""
    from ..trace import save_trace
    if output is not None and output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")
    if logs.count("-") > 1:
        raise UserError("stdin (-) can be read only once")
    traces = [_read(p, show=not as_json) for p in logs]
    for lt in traces:
        _warn(lt, quiet=as_json)
    header, reqs = _concat(traces)
    if name:
        header = dataclasses.replace(header, name=name)
    n = 0
    if output is not None:
        n = save_trace(output, header, reqs, overwrite=force)
    doc = {"logs": [_summary(lt) for lt in traces], "output": str(output) if output else None,
           "requests_written": n}
    if as_json:
        print_json(doc)
        return
    for lt, s in zip(traces, doc["logs"]):
        rows = [("lines", f"{s['lines']:,} ({s['known_lines']:,} known, {s['unknown_lines']:,} skipped, "
                          f"{s['malformed_lines']} malformed)")]
        if s["fork"]:
            rows.append(("server", f"{s['fork']['name']} (line {s['fork']['line']}): a relative of llama-server "
                                   "whose checkpoint rules ckptsim does not model"))
        if s["fork"]:
            build = "not dated: a relative's wording dates no llama-server build"
        elif s["build_printed"]:
            build = f"b{s['build']}"
        else:
            build = f"b{s['build']} (not printed; wording fits {s['build_wording']})"
        rows.append(("build", build))
        rows.append(("tasks", f"{s['tasks']} ({s['requests']} usable as requests)"))
        rows.append(("events", ", ".join(f"{k} {v}" for k, v in sorted(s["events"].items())) or "none"))
        rows.append(("settings", _settings_text(s["settings"], s["settings_evidence"]) or "none"))
        if not s["checkpoint_lines_visible"]:
            rows.append(("note", "no checkpoint lines: since b9829 they need -lv 4"))
        show_table(f"{s['log']}", [Col("what", "what", "what", text=True), Col("value", "value", "value", text=True)],
                   [{"what": w, "value": v} for w, v in rows], wide=wide, show_header=False)
    if output is not None:
        out.print(f"wrote {n} requests to {output}")


def _groups_settle(rows: list[dict]) -> bool:
    """Whether any rule group of a dated build range settles a decision (else they are one line)."""
    return any(r["decisions"] for r in rows)


def _settings_text(settings: dict, evidence: dict) -> str:
    """'ctx_checkpoints=64 (line 12, inferred), n_slots=2 (line 10, inferred)': each setting read
    off the log with the line that shows it (parse, validate and explain print the same)."""
    return ", ".join(
        f"{k}={v}" + (f" (line {evidence[k]['line']}{', inferred' if 'inferred' in evidence[k]['how'] else ''})"
                      if k in evidence else "")
        for k, v in sorted(settings.items()) if not k.startswith("_"))


@app.command("validate")
@cli_errors
def validate_cmd(log: str = typer.Argument(..., metavar="LOG", help="A llama-server log (text, .gz, -)."),
                 version: Optional[str] = typer.Option(None, "--version", help="Build to replay, e.g. b9161 "
                                                       "(default: printed in the log, else dated from its wording)."),
                 profile: Optional[str] = typer.Option(None, "--profile", help="Cost profile for prompt times."),
                 n_slots: Optional[int] = typer.Option(None, "--n-slots", "-np", help="Override -np."),
                 ctx_checkpoints: Optional[int] = typer.Option(None, "--ctx-checkpoints", "-ctxcp"),
                 min_step: Optional[int] = typer.Option(None, "--checkpoint-min-step", "-cms"),
                 batch: Optional[int] = typer.Option(None, "--batch", "-b"),
                 ubatch: Optional[int] = typer.Option(None, "--ubatch", "-ub"),
                 cache_ram: Optional[float] = typer.Option(None, "--cache-ram", help="MiB; 0 off, -1 unlimited."),
                 min_agreement: Optional[float] = typer.Option(None, "--min-agreement",
                                                               help="Exit 1 when agreement is below this (0-1)."),
                 wide: bool = WideOpt,
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON document and nothing else.")):
    """Replay a log through the llama-server policy and compare each decision with the log."""
    from ..validate import DECISIONS, validate_log
    check_cache_ram(cache_ram)
    check_batches(batch, ubatch)
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise UserError(f"--min-agreement {min_agreement:g}: must be between 0 and 1 (a fraction)")
    check_profile(profile)
    overrides = {"n_slots": n_slots, "ctx_checkpoints": ctx_checkpoints, "n_batch": batch,
                 "n_ubatch": ubatch, "cache_ram_mib": cache_ram}
    v = validate_log(log, version=version, profile=profile, overrides=overrides, min_step=min_step)
    if v.n_tasks == 0:
        raise UserError(f"{log}: no llama-server task found in the log, nothing to validate "
                        "(is it a server log? `ckptsim parse` shows what was recognised)")
    doc = v.to_json()
    if as_json:
        print_json(doc)
    else:
        by = v.by_decision()
        rows = [{"decision": d, "agreed": f"{by[d]['agreed']:,}", "mismatch": f"{by[d]['mismatch']:,}",
                 "unknown": f"{by[d]['unknown']:,}"} for d in DECISIONS]
        ag = v.agreement
        rows.append({"decision": "all", "agreed": f"{v.agreed:,}", "mismatch": f"{len(v.known) - v.agreed:,}",
                     "unknown": f"{len(v.decisions) - len(v.known):,}"})
        show_table(f"{log}: {v.policy}", [Col("decision", "decision", "decision", text=True)]
                   + [Col(c, c, c) for c in ("agreed", "mismatch", "unknown")], rows, wide=wide)
        if v.fork:
            out.print(f"this log comes from {v.fork['name']} (its wording, line {v.fork['line']}), not mainline "
                      f"llama-server: its checkpoint rules are not modelled, so no decision is settled",
                      highlight=False)
        if v.build_wording:
            out.print(f"build not printed; its wording fits {v.build_wording['text']}", highlight=False)
        if _groups_settle(v.build_range):
            rows_to_print = v.build_range
        else:
            rows_to_print = []
            if len(v.build_range) > 1:
                out.print(f"  rule groups {v.build_range[0]['builds'].split('-')[0]}-"
                          f"{v.build_range[-1]['builds'].split('-')[-1]}: {len(v.build_range)} groups, none "
                          "settles a decision of this log (nothing tells them apart)", highlight=False)
        for r in rows_to_print:
            mark = "replayed as this" if v.policy.split("version=")[-1].split(",")[0] == r["as"] else ""
            bad = f", first mismatch at line {r['first_mismatch_line']}" if r["first_mismatch_line"] else ""
            out.print(f"  rule group {r['builds']}: {r['agreed']}/{r['decisions']} "
                      f"agree{bad}{' (' + mark + ')' if mark else ''}", highlight=False)
        if v.settings_evidence:
            out.print("settings read from the log: " + _settings_text(
                {k: e["value"] for k, e in v.settings_evidence.items()}, v.settings_evidence), highlight=False)
        out.print(f"{doc['tasks']} tasks, {doc['decisions']} known decisions, agreement "
                  + (f"{ag:.1%}" if ag is not None else "n/a (nothing the log could settle)"))
        for m in doc["mismatches"]:
            out.print(f"  mismatch line {m['line']}: task {m['task']} {m['decision']}: "
                      f"log {m['logged']} vs simulated {m['simulated']}", highlight=False)
        for why, n in doc["unknown_reasons"].items():
            out.print(f"  unknown ({n}): {why}", highlight=False)
        pt = doc["prompt_time"]
        if pt["mean_abs_error_pct"] is not None:
            n, same = len(pt["tasks"]), pt["same_work_tasks"]
            lw = pt["logged_work"]
            out.print(f"prompt time (profile {v.profile}), over {n} tasks with a timing line:", highlight=False)
            out.print(f"  the profile on the tokens the log processed: mean |error| {lw['mean_abs_error_pct']:.1f}% "
                      f"per task, total {lw['total_logged_work_ms'] / 1000:,.2f} s vs "
                      f"{lw['total_logged_ms'] / 1000:,.2f} s logged ({lw['total_error_pct']:+.1f}%)",
                      highlight=False)
            out.print(f"  the replay: mean |error| {pt['mean_abs_error_pct']:.1f}% per task, total "
                      f"{pt['total_predicted_ms'] / 1000:,.2f} s ({pt['total_error_pct']:+.1f}%); it re-processed "
                      f"what the log did in {same} of {n}"
                      + ("" if same == n else " (the others differ in its decisions, not its costs)"),
                      highlight=False)
    if min_agreement is not None and (v.agreement is None or v.agreement < min_agreement):
        if not as_json:
            err.print(f"agreement below {min_agreement:.0%}")
        raise typer.Exit(EXIT_FAILED)


@app.command("explain")
@cli_errors
def explain_cmd(log: str = typer.Argument(..., metavar="LOG", help="A llama-server log (text, .gz, -); "
                                                                   "a pasted excerpt is fine."),
                version: Optional[str] = typer.Option(None, "--version", help="Build to replay, e.g. b9161 "
                                                      "(default: printed in the log, else dated from its wording)."),
                as_json: bool = typer.Option(False, "--json", help="Print one JSON document and nothing else.")):
    """What the server did with each task of a log, and why, in plain words; then a verdict."""
    from ..explain import explain_log
    ex = explain_log(log, version=version)
    if not ex.tasks and not ex.left_out:
        raise UserError(f"{log}: no llama-server task found in the log, nothing to explain "
                        "(is it a server log? `ckptsim parse` shows what was recognised)")
    if as_json:
        print_json(ex.to_json())
        return
    rng = ex.validation.build_range
    bw = ex.validation.build_wording
    dated = f"; build not printed, its wording fits {bw['text']}" if bw else ""
    if _groups_settle(rng):
        dated += "; rule groups tried: " + ", ".join(f"{r['builds']} {r['agreed']}/{r['decisions']}" for r in rng)
    elif len(rng) > 1:
        dated += f"; none of its {len(rng)} rule groups settles a decision"
    fk = ex.validation.fork
    how = f"from {fk['name']}: not replayed as mainline" if fk else f"replayed as {ex.build}{dated}"
    out.print(f"[bold]{escape(log)}[/] — {how}", highlight=False)
    evd = ex.validation.settings_evidence
    if evd:
        out.print("settings read from the log: " + _settings_text({k: e["value"] for k, e in evd.items()}, evd),
                  highlight=False, markup=False)
    if ex.validation.fork:
        out.print(f"This log comes from {ex.validation.fork['name']} (line {ex.validation.fork['line']}), not "
                  "mainline llama-server: the stories below are what its log says; ckptsim does not model "
                  "its checkpoint rules, so the simulator's verdicts are left out.", highlight=False, markup=False)
    for t in ex.tasks:
        out.print(t.text, highlight=False, markup=False)
    for lo in ex.left_out:
        out.print(lo["text"], highlight=False, markup=False)
    out.print("")
    out.print(ex.verdict, highlight=False, markup=False)
