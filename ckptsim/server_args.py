"""llama-server's own command-line flags, read into what the simulator models.

A flag line as llama-server takes it (``-np 1 --ctx-checkpoints 32 --checkpoint-min-step 256
--cache-ram 0 -b 2048 -ub 2048``, the line ``recommend`` prints) becomes server settings
(``ServerConfig`` fields) and the two checkpoint-spacing flags, which are parameters of the
``llama-server`` policy (spec §8). Flags llama-server has that do not change checkpoint
behaviour (``-m``, ``-ngl``, ``--port``, ...) are accepted and listed as ignored, so a real
command line can be pasted whole; a flag llama-server does not have is an error that names it.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass

from .sim import ServerConfig


class ServerArgsError(ValueError):
    """A flag line that llama-server would not take: an unknown flag, a missing or bad value."""


@dataclass(frozen=True)
class ServerArgs:
    """The settings a flag line gives (None: not given, the default applies)."""

    n_slots: int | None = None                 # -np
    ctx_checkpoints: int | None = None         # --ctx-checkpoints
    min_step: int | None = None                # --checkpoint-min-step (b9310+)
    every_n: int | None = None                 # --checkpoint-every-n-tokens (b8218-b9309)
    cache_ram_mib: float | None = None         # --cache-ram
    n_batch: int | None = None                 # -b
    n_ubatch: int | None = None                # -ub
    n_ctx: int | None = None                   # -c (per slot: the simulator's n_ctx is the slot's)
    kv_unified: bool | None = None             # -kvu / -no-kvu
    slot_prompt_similarity: float | None = None  # -sps
    cache_idle_slots: bool | None = None       # --cache-idle-slots / --no-cache-idle-slots
    ignored: tuple[str, ...] = ()              # flags (with their values) the simulator does not model

    def over(self, base: ServerArgs) -> ServerArgs:
        """These settings where given, ``base``'s elsewhere (a flag typed on the command line wins
        over the same flag inside ``--server-args``)."""
        merged = {f.name: (getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name))
                  for f in dataclasses.fields(self) if f.name != "ignored"}
        return ServerArgs(**merged, ignored=base.ignored + self.ignored)

    def config(self, base: ServerConfig | None = None) -> ServerConfig:
        """``base`` (default: the simulator's defaults) with the given settings applied."""
        base = base or ServerConfig()
        changes = {k: getattr(self, k) for k in _CONFIG_FIELDS if getattr(self, k) is not None}
        if self.n_ctx is not None and self.n_ctx > 0:
            # spec §8: a unified KV cache gives every slot the whole context, otherwise n_ctx / np
            unified = self.kv_unified if self.kv_unified is not None else base.kv_unified
            slots = self.n_slots or base.n_slots
            changes["n_ctx"] = self.n_ctx if unified else max(1, self.n_ctx // slots)
        return dataclasses.replace(base, **changes)


_CONFIG_FIELDS = ("n_slots", "ctx_checkpoints", "cache_ram_mib", "n_batch", "n_ubatch", "kv_unified",
                  "slot_prompt_similarity", "cache_idle_slots")

# Flags the simulator models: flag -> (ServerArgs field, value type). Names as llama-server's
# common/arg.cpp spells them (spec §8), old names included.
MODELLED: dict[str, tuple[str, type]] = {
    "-np": ("n_slots", int), "--parallel": ("n_slots", int),
    "-ctxcp": ("ctx_checkpoints", int), "--ctx-checkpoints": ("ctx_checkpoints", int),
    "--swa-checkpoints": ("ctx_checkpoints", int),
    "-cms": ("min_step", int), "--checkpoint-min-step": ("min_step", int),
    "-cpent": ("every_n", int), "--checkpoint-every-n-tokens": ("every_n", int),
    "-cram": ("cache_ram_mib", float), "--cache-ram": ("cache_ram_mib", float),
    "-b": ("n_batch", int), "--batch-size": ("n_batch", int),
    "-ub": ("n_ubatch", int), "--ubatch-size": ("n_ubatch", int),
    "-c": ("n_ctx", int), "--ctx-size": ("n_ctx", int),
    "-sps": ("slot_prompt_similarity", float), "--slot-prompt-similarity": ("slot_prompt_similarity", float),
}
SWITCHES: dict[str, tuple[str, bool]] = {
    "-kvu": ("kv_unified", True), "--kv-unified": ("kv_unified", True),
    "-no-kvu": ("kv_unified", False), "--no-kv-unified": ("kv_unified", False),
    "--cache-idle-slots": ("cache_idle_slots", True), "--no-cache-idle-slots": ("cache_idle_slots", False),
    "--clear-idle": ("cache_idle_slots", True), "--no-clear-idle": ("cache_idle_slots", False),
}

# llama-server flags that do not change where checkpoints are taken, kept or restored: the model,
# offloading, sampling, networking, logging, chat templates, speculative decoding (spec §7), KV
# types. Accepted so a real command line can be pasted, and reported as ignored. Those that take a
# value take the next word (llama-server has no positional arguments).
IGNORED = frozenset("""
-m --model -mu --model-url -hf -hfr --hf-repo -hff --hf-file -hft --hf-token -hfd -hfrd --hf-repo-draft
-hfv -hfrv --hf-repo-v -hffv --hf-file-v -dr --docker-repo -a --alias --host --port --path --api-prefix
--api-key --api-key-file --ssl-key-file --ssl-cert-file -to --timeout --threads-http --metrics --slots
--no-slots --props --slot-save-path --media-path --webui --no-webui --webui-config --webui-config-file
--models-dir --models-preset --models-max --models-autoload --no-models-autoload --sleep-idle-seconds
-t --threads -tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll
-Cb --cpu-mask-batch -Crb --cpu-range-batch --cpu-strict-batch --prio-batch --poll-batch --numa
-ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split -mg --main-gpu -dev --device
--list-devices -ot --override-tensor -cmoe --cpu-moe -ncmoe --n-cpu-moe -nkvo --no-kv-offload -kvo
--kv-offload --no-op-offload --repack --no-repack --no-host -fit --fit -fitt --fit-target -fitc --fit-ctx
--mlock --mmap --no-mmap -dio --direct-io -ndio --no-direct-io --check-tensors --override-kv
-fa --flash-attn -ctk --cache-type-k -ctv --cache-type-v -dt --defrag-thold -nr --no-repack
--rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx --yarn-ext-factor
--yarn-attn-factor --yarn-beta-slow --yarn-beta-fast -gan --grp-attn-n -gaw --grp-attn-w
--swa-full --context-shift --no-context-shift --cache-prompt --no-cache-prompt --cache-reuse
-cb --cont-batching -nocb --no-cont-batching --no-warmup --warmup -n --predict --n-predict --keep
--temp --top-k --top-p --min-p --top-nsigma --xtc-probability --xtc-threshold --typical --typical-p
--repeat-last-n --repeat-penalty --presence-penalty --frequency-penalty --dry-multiplier --dry-base
--dry-allowed-length --dry-penalty-last-n --dry-sequence-breaker --dynatemp-range --dynatemp-exp
--mirostat --mirostat-lr --mirostat-ent -l --logit-bias --grammar --grammar-file -j --json-schema
-jf --json-schema-file -s --seed --samplers --sampling-seq --ignore-eos --n-probs
--jinja --no-jinja --chat-template --chat-template-file --chat-template-kwargs --reasoning-format
--reasoning-budget -rea --reasoning --skip-chat-parsing --no-prefill-assistant -sp --special
--embedding --embeddings --rerank --reranking --pooling --mmproj --mmproj-url --no-mmproj
--mmproj-offload --no-mmproj-offload --image-min-tokens --image-max-tokens --lora --lora-scaled
--lora-init-without-apply --control-vector --control-vector-scaled --control-vector-layer-range
-md --model-draft -ngld --gpu-layers-draft --n-gpu-layers-draft -devd --device-draft -cd --ctx-size-draft
--draft --draft-n --draft-max --draft-min --draft-p-min --draft-p-split -ctkd --cache-type-k-draft
-ctvd --cache-type-v-draft -otd --override-tensor-draft -cmoed --cpu-moe-draft -ncmoed --n-cpu-moe-draft
--spec-replace --spec-type --spec-draft-n-max --spec-draft-n-min
-lv --verbosity --log-verbosity -v --verbose --log-file --log-disable --log-colors --log-prefix
--log-timestamps --offline --no-perf --perf -e --escape --no-escape -tps --tools --alias
""".split())

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_server_args(args: str | list[str]) -> ServerArgs:
    """Read a llama-server flag line (a string, split as a shell would, or a list of words).

    A leading ``llama-server`` (or a path ending in it) is skipped; ``--flag=value`` works too.
    """
    words = shlex.split(args) if isinstance(args, str) else list(args)
    if words and words[0].rsplit("/", 1)[-1] in ("llama-server", "llama-server.exe"):
        words = words[1:]
    values: dict[str, object] = {}
    ignored: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in SWITCHES:
            field_, on = SWITCHES[flag]
            values[field_] = on
            i += 1
        elif flag in MODELLED:
            field_, kind = MODELLED[flag]
            if eq:
                raw, i = inline, i + 1
            elif i + 1 < len(words):
                raw, i = words[i + 1], i + 2
            else:
                raise ServerArgsError(f"llama-server flag {flag}: needs a value")
            values[field_] = _value(flag, raw, kind)
        elif flag in IGNORED:
            taken = [word]
            i += 1
            if not eq and i < len(words) and (not words[i].startswith("-") or _NUMBER.match(words[i])):
                taken.append(words[i])
                i += 1
            ignored.append(" ".join(taken))
        elif flag.startswith("-"):
            raise ServerArgsError(f"unknown llama-server flag {flag!r}; ckptsim models "
                                  f"{', '.join(sorted(k for k in MODELLED if k.startswith('--')))} "
                                  "and ignores the flags that do not change checkpoints (-m, -ngl, ...)")
        else:
            raise ServerArgsError(f"llama-server flags: {word!r} is not a flag (llama-server takes no "
                                  "positional arguments)")
    n_slots = values.get("n_slots")
    if n_slots == -1:
        # -np -1 (auto, spec §8): 4 slots and a unified KV cache
        values["n_slots"] = 4
        values.setdefault("kv_unified", True)
    return ServerArgs(**values, ignored=tuple(ignored))


def _value(flag: str, raw: str, kind: type):
    try:
        v = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ServerArgsError(f"llama-server flag {flag} {raw}: expected {what}") from None
    field_ = MODELLED[flag][0]
    lowest = _LOWEST.get(field_)
    # -1 is a word of its own (auto / unlimited / off) where it is allowed, not the bottom of a range
    if lowest is not None and (v < lowest[0] or (lowest[0] == -1 and -1 < v < (1 if field_ == "n_slots" else 0))):
        raise ServerArgsError(f"llama-server flag {flag} {raw}: {lowest[1]}")
    return v


_LOWEST = {
    "n_slots": (-1, "expected -1 (auto) or a slot count >= 1"),
    "ctx_checkpoints": (0, "must be >= 0"),
    "min_step": (0, "must be >= 0 (0: no minimum)"),
    "every_n": (-1, "expected -1 (off) or a token count"),
    "cache_ram_mib": (-1, "expected -1 (unlimited), 0 (off) or a positive size in MiB"),
    "n_batch": (1, "must be >= 1"),
    "n_ubatch": (1, "must be >= 1"),
    "n_ctx": (0, "must be >= 0 (0: the model's)"),
}


def policy_with_flags(spec: str, min_step: int | None, every_n: int | None) -> tuple[str, list[str]]:
    """``spec`` with ``--checkpoint-min-step`` / ``--checkpoint-every-n-tokens`` applied to each
    part of it that has that setting (``llama-server``, ``coverage``); returns the new spec and the
    flags it took. A spec that sets the value itself and differs is refused: a run labelled with
    one value must not run under another."""
    wanted = {"min_step": min_step, "every_n": every_n}
    if all(v is None for v in wanted.values()):
        return spec, []
    from .policies import ALIASES, make_policy
    taken: set[str] = set()
    pieces = []
    for piece in spec.split("+"):
        piece = ALIASES.get(piece.strip(), piece.strip())
        pol = make_policy(piece)
        fields_ = {f.name for f in dataclasses.fields(pol)} if dataclasses.is_dataclass(pol) else set()
        name, _, args = piece.partition(":")
        params = [a.strip() for a in args.split(",") if a.strip()]
        given = {_canonical(a.partition("=")[0]): a.partition("=")[2].strip() for a in params}
        for key, v in wanted.items():
            if v is None or key not in fields_:
                continue
            if key in given:
                if given[key] != str(v):
                    raise ServerArgsError(f"policy {spec!r} sets {key}={given[key]} but the flags say "
                                          f"{_FLAG_OF[key]} {v}; drop one of them")
            else:
                params.append(f"{key}={v}")
            taken.add(_FLAG_OF[key])
        pieces.append(f"{name}:{','.join(params)}" if params else name)
    return "+".join(pieces), sorted(taken)


_FLAG_OF = {"min_step": "--checkpoint-min-step", "every_n": "--checkpoint-every-n-tokens"}


def _canonical(key: str) -> str:
    key = key.strip().replace("-", "_")
    return {"checkpoint_min_step": "min_step", "checkpoint_every_n_tokens": "every_n"}.get(key, key)
