"""``ckptsim explain LOG``: what the server did with each task, and why, in plain words.

Built on the same two readings as ``validate``: the facts the log states per task (the server's
``n_past`` = common prefix with the slot's cache, the restored checkpoint, full re-processing,
the checkpoints created and erased, prompt time; ``ingest.log_trace``) and the simulator's replay
with that build's rules (spec §2.2: restore the newest checkpoint at or below ``n_past``, else
re-process everything). A task's explanation says what the log shows; the simulator's verdict on
each decision (agreed / differs / unknown, with why) is attached, never substituted for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .validate import Validation, restore_decided, validate_log

# "a checkpoint every N tokens would have kept ...": the spacing the suggestion is made with when
# the log shows no min step (the server's default before b9765, spec §8)
_SUGGEST_STEP = 256


@dataclass
class TaskStory:
    """One task, as the log tells it."""

    task: int
    line: int
    slot: int | None
    n_prompt: int
    n_past: int | None               # common prefix with what the slot held (None: not in the log)
    cache_n: int | None
    restored: int                    # checkpoint n_tokens restored, -1 none
    full: bool
    created: list[int]
    erased: list[int]
    held_before: list[int]           # checkpoints the slot held that this log shows (may be partial)
    prompt_ms: float | None
    prompt_n: int | None
    lost: int | None                 # common prefix re-processed for want of a checkpoint
    length_inferred: bool = False    # the prompt length is an estimate (progress lines, T-4, ...)
    length_range: tuple[int, int] | None = None   # what two-decimal progress lines leave of it
    held_unnamed: str = ""           # first task of an excerpt: how many older ones its lines leave unnamed
    simulator: dict[str, str] = field(default_factory=dict)   # decision -> agreed | mismatch | unknown
    why_unknown: str = ""
    decided: bool = True             # the restore decision is in the log (it does not end before it)
    text: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Explanation:
    """Every task's story and a verdict for the whole log."""

    log: str
    build: str
    settings: dict
    tasks: list[TaskStory]
    left_out: list[dict]
    validation: Validation
    verdict: str = ""
    totals: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"log": self.log, "build": self.build, "settings": self.settings,
                "settings_evidence": self.validation.settings_evidence,
                "build_range": self.validation.build_range,
                "build_wording": self.validation.build_wording or None,
                "tasks": [t.to_json() for t in self.tasks], "left_out": self.left_out,
                "totals": self.totals, "verdict": self.verdict,
                "validation": {"decisions": len(self.validation.known), "agreed": self.validation.agreed,
                               "agreement": self.validation.agreement, "policy": self.validation.policy}}


def _n(x: int | float) -> str:
    return f"{x:,.0f}"


def _secs(ms: float | None) -> str:
    if ms is None:
        return ""
    return f" ({ms / 1000:.1f} s)" if ms >= 1000 else f" ({ms:.0f} ms)"


def _name(task: int, slot: int | None, line: int) -> str:
    """'task 921 (line 40, slot 3)'; a task the log shows without an id (a hand-edited paste, a
    selection cut before its task started) is 'task ?'."""
    where = f"line {line}" + ("" if slot is None or slot < 0 else f", slot {slot}")
    return f"task {task if task >= 0 else '?'} ({where})"


def _story(t: TaskStory, step: int) -> str:
    size = (f"{_n(t.length_range[0])}-{_n(t.length_range[1])} tokens (its progress lines)" if t.length_range
            else f"{'about ' if t.length_inferred else ''}{_n(t.n_prompt)} tokens")
    head = f"{_name(t.task, t.slot, t.line)}: prompt {size}"
    held = (f"; the slot held checkpoints at {', '.join(_n(k) for k in t.held_before)}"
            if t.held_before else "")
    if t.held_unnamed:
        held += f" ({t.held_unnamed})" if held else f"; the slot held {t.held_unnamed}"
    rep = t.prompt_n if t.prompt_n is not None else (t.n_prompt - t.cache_n if t.cache_n is not None else None)
    about = "about " if t.length_inferred and t.prompt_n is None else ""
    rep_s = f"{about}{_n(rep)} tokens re-processed{_secs(t.prompt_ms)}" if rep is not None else "re-processed"
    if not t.decided:
        past = f"; n_past {_n(t.n_past)} (its common prefix with what the slot held)" if t.n_past is not None else ""
        body = f"{past}. The log ends before the server decided what to restore"
    elif t.n_past is None and t.restored < 0 and not t.full:
        body = f". What the slot held before is not in the log; {rep_s}"
    elif t.full:
        past = f"n_past {_n(t.n_past)}" if t.n_past is not None else "the common prefix"
        body = (f"; {past}{held}. No checkpoint lay at or below {past.split()[-1]}, so the whole prompt was "
                f"re-processed: {rep_s}")
    elif t.restored >= 0:
        above = [k for k in t.held_before if t.n_past is not None and k > t.n_past]
        why = (f"{', '.join(_n(k) for k in above)} lay past n_past, so " if above else "")
        past = f"n_past {_n(t.n_past)}" if t.n_past is not None else "n_past not in the log"
        body = (f"; {past}{held}. {why}"
                f"{_n(t.restored)} was restored (the newest at or below n_past) and {rep_s}")
    elif t.n_past == 0 or t.cache_n == 0:
        body = f"; nothing in common with what the slot held: {rep_s}"
    else:
        body = (f"; it extends what the slot held (common prefix {_n(t.n_past)}), kept as is with no "
                f"restore: {rep_s}")
    tail = []
    if t.lost:
        kept_k = (t.n_past // step) * step if t.n_past else 0
        gain = kept_k - max(t.restored, 0)
        tail.append(f"{_n(t.lost)} of them were in common with the cache")
        if gain > 0:
            tail.append(f"a checkpoint every {step} tokens would have kept {_n(gain)} of them")
    if t.erased:
        tail.append(f"erased {', '.join(_n(k) for k in t.erased)}")
    if t.created:
        tail.append(f"created {', '.join(_n(k) for k in t.created)}")
    s = head + body + (". " + "; ".join(tail) if tail else "") + "."
    bad = [d for d, st in t.simulator.items() if st == "mismatch"]
    if bad:
        s += f" [the simulator differs on {', '.join(bad)}]"
    elif t.why_unknown:
        s += f" [not checked: {t.why_unknown}]"
    return s


_WHAT = {"cache_n": "cache_n", "restored": "the restore", "full": "the restore", "created": "what it created",
         "erased": "what it erased"}


def _why_text(why_unknown: dict[str, str]) -> str:
    """The reasons a task's decisions are open; when only some are, which ones (a paste that
    ends inside a prefill settles what it created there, not what it erased)."""
    if not why_unknown:
        return ""
    if len(why_unknown) == len(_WHAT):
        return "; ".join(sorted(set(why_unknown.values())))
    by_why: dict[str, list[str]] = {}
    for d, w in why_unknown.items():
        what = by_why.setdefault(w, [])
        if _WHAT.get(d, d) not in what:
            what.append(_WHAT.get(d, d))
    return "; ".join(f"{' and '.join(what)}: {w}" for w, what in sorted(by_why.items()))


def explain_log(path: str | Path, version: str | None = None, profile: str | None = None) -> Explanation:
    """Explain every task of a log; ``version`` overrides the build the log is replayed as."""
    from .ingest.log_trace import excerpt_seeds, trace_from_log
    lt = trace_from_log(path)
    seeds, _ = excerpt_seeds(lt.log)
    val = validate_log(path, version=version, profile=profile)
    per = {p["request"]: p for p in val.per_task()}
    s = lt.log.settings
    step = int(s.get("min_step") or 0) or int(s.get("every_n") or 0) or _SUGGEST_STEP
    step = min(step, _SUGGEST_STEP) if step > 4096 else step
    held: dict[int, list[int]] = {}
    stories: list[TaskStory] = []
    for r in lt.requests:
        o = r.observed or {}
        slot = o.get("slot")
        before = sorted(held.get(slot, []))
        seed = seeds.get(o.get("task", -1))
        unnamed = ""
        if seed is not None:
            # an excerpt: what the task's own lines show the slot held (spec §6 scan / erase lines)
            before = sorted(set(before) | set(seed.listed))
            lo, hi = seed.n_older
            more = f"{lo}" if lo == hi else f"{lo} to {hi}"
            unnamed = "" if hi == 0 else f"and {more} older checkpoint{'s' if hi > 1 else ''} the log does not name"
        n_past = o.get("n_lcp")
        cache_n = o.get("cache_n")
        lost = (n_past - cache_n) if (n_past is not None and cache_n is not None and n_past > cache_n) else 0
        p = per.get(r.id, {})
        why = _why_text(p.get("why_unknown", {}))
        decided = restore_decided(o)
        st = TaskStory(task=o.get("task", r.id), line=o.get("line", 0), slot=slot, n_prompt=r.n_prompt,
                       n_past=n_past, cache_n=cache_n, restored=int(o.get("restored", -1)),
                       full=bool(o.get("full_reprocess")), created=list(o.get("created", [])),
                       erased=sorted(o.get("erased", [])), held_before=before, held_unnamed=unnamed,
                       prompt_ms=o.get("prompt_ms"),
                       prompt_n=o.get("prompt_n"), lost=lost,
                       length_inferred=o.get("n_prompt_source") == "inferred",
                       length_range=tuple(o["n_prompt_range"]) if o.get("n_prompt_range") else None,
                       simulator=dict(p.get("status", {})), why_unknown=why, decided=decided)
        st.text = _story(st, step)
        stories.append(st)
        now = [k for k in before if k not in st.erased] + st.created
        held[slot] = now
    # tasks whose prompt length the excerpt lacks are no requests, but their lines still tell a story
    by_task = {t.task: t for t in lt.log.tasks}
    left = []
    for lo in lt.left_out:
        t = by_task.get(lo["task"])
        bits = [f"{_name(lo['task'], None if t is None else t.slot, lo['line'])}: the prompt "
                f"length is not in this excerpt"]
        if t is not None:
            if t.full_reprocess:
                bits.append("no checkpoint lay at or below n_past, so the whole prompt was re-processed")
            elif t.restored >= 0:
                bits.append(f"{_n(t.restored)} was restored")
            if t.erased:
                bits.append(f"erased {', '.join(_n(n) for _, n, _ in t.erased)}")
            if t.created:
                bits.append(f"created {', '.join(_n(n) for n, _, _ in t.created)}")
        left.append({**lo, "text": "; ".join(bits) + "."})
    ex = Explanation(log=str(path), build=val.policy.split("version=")[-1].split(",")[0],
                     settings={k: v for k, v in s.items() if not k.startswith("_")}, tasks=stories,
                     left_out=left, validation=val)
    _verdict(ex, step)
    return ex


def _verdict(ex: Explanation, step: int) -> None:
    ts = ex.tasks
    prompt = sum(t.n_prompt for t in ts)
    # re-processed tokens: only where the log shows them (timings, or the restore decision's cache_n)
    rep = sum((t.prompt_n if t.prompt_n is not None else t.n_prompt - t.cache_n) for t in ts
              if t.decided and (t.prompt_n is not None or t.cache_n is not None))
    lost = sum(t.lost or 0 for t in ts)
    full = sum(1 for t in ts if t.full)
    ms = [(t.prompt_ms, t.prompt_n) for t in ts if t.prompt_ms and t.prompt_n]
    ms_per_tok = sum(a for a, _ in ms) / sum(b for _, b in ms) if ms else None
    ex.totals = {"tasks": len(ts), "prompt_tokens": prompt, "reprocessed_tokens": rep, "lost_tokens": lost,
                 "full_reprocess": full, "lost_s": round(lost * ms_per_tok / 1000, 1) if ms_per_tok else None}
    v = ex.validation
    if not ts:
        one = len(ex.left_out) == 1
        ex.verdict = (f"The excerpt shows {len(ex.left_out)} task{'' if one else 's'} but not "
                      f"{'its prompt length' if one else 'their prompt lengths'}: what the lines above say is all it can tell; a longer excerpt "
                      "(from the task's 'new prompt' line) settles more." if ex.left_out else
                      "No llama-server task is in this log, so there is nothing to explain.")
        return
    blind = sum(1 for t in ts if t.n_past is None or not t.decided)
    parts = [f"{len(ts)} task{'s' if len(ts) != 1 else ''}, {_n(prompt)} prompt tokens"
             + (f", {_n(rep)} re-processed" if blind < len(ts) else "")]
    if blind == len(ts):
        parts.append("what the slots held before is not in the log, so no loss can be counted")
    elif lost:
        t_s = f" (about {ex.totals['lost_s']:,.1f} s at this log's speed)" if ex.totals["lost_s"] else ""
        parts.append(f"{_n(lost)} of those were in common with what the slot held and were re-processed "
                     f"only because no checkpoint lay close enough{t_s}")
    else:
        parts.append("no common prefix was lost: every reusable token was reused")
    if full:
        parts.append(f"{full} task{'s' if full > 1 else ''} re-processed the whole prompt")
    ag = v.agreement
    if v.known:
        parts.append(f"the simulator, replaying this log as {ex.build}, reproduces {v.agreed} of {len(v.known)} "
                     f"decisions the log settles ({ag:.0%})")
    else:
        parts.append("the log settles no decision the simulator could be checked on")
    rec = (f"To see what to set: ckptsim parse {Path(ex.log).name} -o trace.jsonl && ckptsim recommend "
           f"trace.jsonl --version {ex.build} --ram-mib N")
    ex.verdict = "; ".join(parts) + ". " + (
        f"A checkpoint spacing of {step} tokens is what the suggestions above assume. " if lost else "") + rec
