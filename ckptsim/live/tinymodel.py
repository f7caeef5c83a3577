"""Random-weight GGUF models of the ``qwen35`` hybrid architecture, for timing without a download
(and of ``lfm2``, a hybrid that llama.cpp builds older than qwen35's support can load).

Prefill time depends on tensor shapes, not on weight values, so a random model with a real
model's shapes times like the real one (its output is gibberish, which timing ignores).
Recipe: ``../shared/docs/live-backend.md``, "A tiny hybrid model, generated".

Layer pattern (Qwen3.5: Gated DeltaNet recurrent layers, full attention every 4th layer)::

    layer  0    1    2    3    4    5    6    7   ...
           GDN  GDN  GDN  ATT  GDN  GDN  GDN  ATT

Presets keep a real model's per-layer shapes; ``n_layer`` may be cut (a multiple of the
attention interval) to keep the file and the run time small. Per-token prefill cost is a sum
over layers, so a cut model's time scales by about ``n_layer_real / n_layer``; the checkpoint
size (recurrent state, spec §4) scales the same way. The vocabulary is always the small byte-level
one below: it only changes the cost of the final logits row, once per request.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ARCH = "qwen35"

# ChatML, enough for /v1/chat/completions and for the server to find user-message starts (spec §2.5).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# A few BPE merges: llama.cpp's gpt2 tokenizer needs the merges key, and a handful of common
# pairs brings text to about 0.86 tokens per ASCII character.
_MERGES = (("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("o", "n"), ("Ġt", "he"),
           ("e", "r"), ("Ġ", "s"), ("a", "t"), ("Ġ", "w"), ("Ġ", "o"), ("e", "n"), ("Ġ", "c"),
           ("i", "t"), ("i", "s"), ("a", "n"), ("o", "r"), ("e", "s"), ("Ġ", "b"))


@dataclass(frozen=True)
class Qwen35Shape:
    """Hyperparameters of a qwen35 model (names follow the GGUF ``qwen35.*`` keys)."""

    name: str
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_sections: tuple[int, int, int, int]
    ssm_state: int            # ssm.state_size: key (and value) head dim of the GDN layers
    ssm_groups: int           # ssm.group_count: GDN key heads
    ssm_v_heads: int          # ssm.time_step_rank: GDN value heads
    ssm_inner: int            # ssm.inner_size = v heads * value head dim
    conv_kernel: int = 4
    full_attention_interval: int = 4
    n_ctx_train: int = 262144
    rope_freq_base: float = 1e7
    dtype: str = "f32"        # weight matrices: "f32" or "f16" (norms and vectors stay f32)
    real_n_layer: int = 0     # layers of the real model this preset was cut from (0: not cut)
    source: str = ""

    @property
    def n_recurrent_layers(self) -> int:
        """Gated DeltaNet layers (every layer but each ``full_attention_interval``-th)."""
        return sum(1 for i in range(self.n_layer) if not self.is_attention(i))

    def is_attention(self, layer: int) -> bool:
        """Whether ``layer`` is a full-attention layer (llama.cpp: ``(il + 1) % interval == 0``)."""
        return (layer + 1) % self.full_attention_interval == 0

    def ckpt_bytes(self) -> int:
        """Recurrent state of one sequence, what a checkpoint copies (spec §4, without ~1 KB headers)."""
        conv_dim = 2 * self.ssm_groups * self.ssm_state + self.ssm_inner
        n_embd_r = (self.conv_kernel - 1) * conv_dim
        n_embd_s = self.ssm_state * self.ssm_inner
        return 4 * self.n_recurrent_layers * (n_embd_r + n_embd_s)

    def ckpt_mib(self) -> float:
        """Checkpoint size in MiB, as the server log's ``size = ... MiB`` reports it (±0.001)."""
        return self.ckpt_bytes() / 2**20

    def kv_mib_per_ktok(self, bytes_per_value: int = 2) -> float:
        """Attention KV cache per 1000 tokens (f16 K and V by default)."""
        n_attn = self.n_layer - self.n_recurrent_layers
        return 1000 * n_attn * 2 * self.n_head_kv * self.head_dim * bytes_per_value / 2**20


PRESETS: dict[str, Qwen35Shape] = {
    # The recipe's tiny model: ~11 MB F32, writes in < 1 s; for tests and dry runs.
    "tiny": Qwen35Shape("tiny", n_embd=256, n_layer=4, n_ff=512, n_head=4, n_head_kv=2, head_dim=64,
                        rope_dim=64, rope_sections=(12, 10, 10, 0), ssm_state=64, ssm_groups=2,
                        ssm_v_heads=4, ssm_inner=256, source="live-backend.md tiny default"),
    # The recipe's bigger variant: visible prefill times (~460 tokens/s on 2 cores).
    "small": Qwen35Shape("small", n_embd=1024, n_layer=8, n_ff=3072, n_head=8, n_head_kv=2,
                         head_dim=128, rope_dim=64, rope_sections=(12, 10, 10, 0), ssm_state=128,
                         ssm_groups=4, ssm_v_heads=8, ssm_inner=1024, dtype="f16",
                         source="live-backend.md bigger variant"),
    # Qwen/Qwen3.5-0.8B text_config: hidden 1024, ff 3584, 24 layers, 8 heads / 2 kv, head_dim 256,
    # partial_rotary_factor 0.25 (rope 64), mrope_section [11, 11, 10], linear k/v heads 16/16 of dim
    # 128, conv 4, full_attention_interval 4, rope_theta 1e7. Checkpoint: 18 GDN layers => 19.27 MiB.
    "qwen3.5-0.8b": Qwen35Shape("qwen3.5-0.8b", n_embd=1024, n_layer=24, n_ff=3584, n_head=8,
                                n_head_kv=2, head_dim=256, rope_dim=64, rope_sections=(11, 11, 10, 0),
                                ssm_state=128, ssm_groups=16, ssm_v_heads=16, ssm_inner=2048,
                                dtype="f16", source="Qwen/Qwen3.5-0.8B config.json (text_config)"),
    # Qwen3.5/3.6-27B per-layer shapes (hidden 5120, ff 17408, 24 heads / 4 kv, head_dim 256,
    # 16 k-heads, 48 v-heads of 128), cut from 64 to 4 layers: 3 GDN + 1 attention. The full model's
    # checkpoint is 149.625 MiB (spec §4); this cut one's is 3/48 of that.
    "qwen3.5-27b-L4": Qwen35Shape("qwen3.5-27b-L4", n_embd=5120, n_layer=4, n_ff=17408, n_head=24,
                                  n_head_kv=4, head_dim=256, rope_dim=64, rope_sections=(11, 11, 10, 0),
                                  ssm_state=128, ssm_groups=16, ssm_v_heads=48, ssm_inner=6144,
                                  dtype="f16", real_n_layer=64,
                                  source="Qwen3.5-27B shapes (spec §4), 4 of 64 layers"),
}


@dataclass(frozen=True)
class Lfm2Shape:
    """Hyperparameters of an ``lfm2`` model (LiquidAI LFM2: gated short-convolution layers and
    grouped-query attention layers). Its recurrent state, what a checkpoint copies, is each conv
    layer's last ``l_cache - 1`` inputs. llama.cpp loads lfm2 from b5900-ish on, so builds that
    predate qwen35 (b8000-ish) but have hybrid checkpoints (b6685+) can run the matrix with it.
    """

    name: str
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    attn_layers: tuple[int, ...]  # the others are short-conv layers
    l_cache: int = 3              # shortconv.l_cache: conv kernel width
    n_ctx_train: int = 128000
    rope_freq_base: float = 1e6
    dtype: str = "f32"
    real_n_layer: int = 0
    source: str = ""
    arch: str = "lfm2"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_recurrent_layers(self) -> int:
        return self.n_layer - len(self.attn_layers)

    def is_attention(self, layer: int) -> bool:
        return layer in self.attn_layers

    def ckpt_bytes(self) -> int:
        """Recurrent state of one sequence: (l_cache - 1) f32 inputs per channel and conv layer."""
        return 4 * self.n_recurrent_layers * (self.l_cache - 1) * self.n_embd

    def ckpt_mib(self) -> float:
        return self.ckpt_bytes() / 2**20

    def kv_mib_per_ktok(self, bytes_per_value: int = 2) -> float:
        return 1000 * len(self.attn_layers) * 2 * self.n_head_kv * self.head_dim * bytes_per_value / 2**20


LFM2_PRESETS: dict[str, Lfm2Shape] = {
    # the qwen35 "tiny" model's sizes (256 wide, 4 layers, one attention layer with 2 KV heads of
    # 64), so the prompt cache holds about as many tokens per MiB with either architecture
    "tiny-lfm2": Lfm2Shape("tiny-lfm2", n_embd=256, n_layer=4, n_ff=512, n_head=4, n_head_kv=2,
                           attn_layers=(3,), source="ckptsim: qwen35 tiny's sizes, lfm2 layers"),
}
# the architecture each preset name writes, for error messages and `conformance`'s fallback
ARCH_OF_PRESET = {**{k: ARCH for k in ("tiny", "small", "qwen3.5-0.8b", "qwen3.5-27b-L4")},
                  **{k: "lfm2" for k in LFM2_PRESETS}}


def preset(name: str, n_layer: int | None = None, dtype: str | None = None) -> Qwen35Shape | Lfm2Shape:
    """A preset shape, optionally cut to ``n_layer`` layers or given another weight type."""
    if name in LFM2_PRESETS:
        if n_layer is not None:
            raise ValueError(f"preset {name!r} cannot be cut to other layer counts")
        if dtype not in (None, "f32", "f16"):
            raise ValueError(f"dtype must be f32 or f16, got {dtype!r}")
        return replace(LFM2_PRESETS[name], dtype=dtype) if dtype else LFM2_PRESETS[name]
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join([*PRESETS, *LFM2_PRESETS])}")
    s = PRESETS[name]
    if n_layer is not None:
        if n_layer < s.full_attention_interval or n_layer % s.full_attention_interval:
            raise ValueError(f"n_layer must be a positive multiple of {s.full_attention_interval}, "
                             f"got {n_layer}")
        s = replace(s, n_layer=n_layer, real_n_layer=s.real_n_layer or s.n_layer,
                    name=f"{s.name}-L{n_layer}" if n_layer != s.n_layer else s.name)
    if dtype is not None:
        if dtype not in ("f32", "f16"):
            raise ValueError(f"dtype must be f32 or f16, got {dtype!r}")
        s = replace(s, dtype=dtype)
    return s


def shape_from_hf_config(cfg: dict, name: str = "hf") -> Qwen35Shape:
    """A shape from a Hugging Face Qwen3.5 ``config.json`` (its ``text_config`` when nested)."""
    t = cfg.get("text_config", cfg)
    try:
        head_dim = int(t["head_dim"])
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        partial = float(rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.25)))
        sections = list(rope.get("mrope_section", [11, 11, 10]))[:3]
        k_dim, v_dim = int(t["linear_key_head_dim"]), int(t["linear_value_head_dim"])
        if k_dim != v_dim:
            raise ValueError("linear_key_head_dim != linear_value_head_dim is not a qwen35 shape")
        return Qwen35Shape(
            name=name, n_embd=int(t["hidden_size"]), n_layer=int(t["num_hidden_layers"]),
            n_ff=int(t["intermediate_size"]), n_head=int(t["num_attention_heads"]),
            n_head_kv=int(t["num_key_value_heads"]), head_dim=head_dim,
            rope_dim=int(head_dim * partial), rope_sections=(*map(int, sections), 0),  # type: ignore[arg-type]
            ssm_state=k_dim, ssm_groups=int(t["linear_num_key_heads"]),
            ssm_v_heads=int(t["linear_num_value_heads"]),
            ssm_inner=int(t["linear_num_value_heads"]) * v_dim,
            conv_kernel=int(t.get("linear_conv_kernel_dim", 4)),
            full_attention_interval=int(t.get("full_attention_interval", 4)),
            n_ctx_train=int(t.get("max_position_embeddings", 262144)),
            rope_freq_base=float(rope.get("rope_theta", t.get("rope_theta", 1e7))),
            dtype="f16", source=f"config.json ({name})")
    except KeyError as e:
        raise ValueError(f"config.json: missing field {e.args[0]!r} for a Qwen3.5 text model") from None


def shape_from_gguf(path: str | Path) -> Qwen35Shape:
    """The shape of an existing qwen35 GGUF (its ``qwen35.*`` metadata), to time a random twin."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def get(key: str):
        f = r.fields.get(f"{ARCH}.{key}")
        if f is None:
            raise ValueError(f"{path}: no '{ARCH}.{key}' in the metadata (not a qwen35 model?)")
        vals = [f.parts[i].tolist() for i in f.data]
        vals = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in vals]
        return vals if len(vals) > 1 else vals[0]

    sections = get("rope.dimension_sections")
    return Qwen35Shape(
        name=Path(path).stem, n_embd=get("embedding_length"), n_layer=get("block_count"),
        n_ff=get("feed_forward_length"), n_head=get("attention.head_count"),
        n_head_kv=get("attention.head_count_kv"), head_dim=get("attention.key_length"),
        rope_dim=get("rope.dimension_count"), rope_sections=tuple(sections[:4]),
        ssm_state=get("ssm.state_size"), ssm_groups=get("ssm.group_count"),
        ssm_v_heads=get("ssm.time_step_rank"), ssm_inner=get("ssm.inner_size"),
        conv_kernel=get("ssm.conv_kernel"), full_attention_interval=get("full_attention_interval"),
        n_ctx_train=get("context_length"), rope_freq_base=float(get("rope.freq_base")),
        dtype="f16", source=f"GGUF metadata of {Path(path).name}")


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode map: token id b is the printable stand-in for byte b."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the byte-level tokenizer every generated model uses."""
    from gguf import TokenType

    tokens = _byte_tokens()
    types = [int(TokenType.NORMAL)] * 256
    merges = []
    for a, b in _MERGES:
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(int(TokenType.NORMAL))
        merges.append(f"{a} {b}")
    for s in SPECIAL_TOKENS:
        tokens.append(s)
        types.append(int(TokenType.CONTROL))
    return tokens, types, merges


def _start(path: Path, arch: str, s):
    """A GGUF writer on ``path``'s temporary name with the header fields both architectures share."""
    import gguf

    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(f"ckptsim random {s.name}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if s.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    return w, tmp


def _add_vocab(w, tokens: list[str], types: list[int], merges: list[str], shape) -> None:
    """The byte-level vocabulary and ChatML template both writers store, and the shape record
    (``model_shape_of`` reads it back)."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    w.add_string("ckptsim.shape", json.dumps(asdict(shape)))


def _random_matrix(rng: np.random.Generator, rows: int, cols: int, wtype) -> np.ndarray:
    # numpy shape (rows, cols) is ggml (cols, rows): a linear map from cols inputs to rows outputs.
    return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(wtype)


def _finish(w, tmp: Path, path: Path) -> Path:
    """Write the GGUF to ``tmp`` and move it into place: a half-written model never has the name."""
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    tmp.replace(path)
    return path


def write_model(path: str | Path, shape: Qwen35Shape | Lfm2Shape, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a random-weight GGUF of ``shape`` (qwen35, or lfm2 for an Lfm2Shape) to ``path``."""
    import gguf

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(shape, Lfm2Shape):
        return _write_lfm2(path, shape, seed)
    rng = np.random.default_rng(seed)
    tokens, types, merges = vocab()
    n_vocab = len(tokens)
    s = shape
    w, tmp = _start(path, ARCH, s)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.rope_dim)
    w.add_rope_dimension_sections(list(s.rope_sections))
    w.add_rope_freq_base(s.rope_freq_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_ssm_conv_kernel(s.conv_kernel)
    w.add_ssm_state_size(s.ssm_state)
    w.add_ssm_group_count(s.ssm_groups)
    w.add_ssm_time_step_rank(s.ssm_v_heads)
    w.add_ssm_inner_size(s.ssm_inner)
    w.add_full_attention_interval(s.full_attention_interval)
    _add_vocab(w, tokens, types, merges, s)

    wtype = np.float16 if s.dtype == "f16" else np.float32

    def mat(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, _random_matrix(rng, rows, cols, wtype))

    def vec(name: str, n: int, value: float | None = None) -> None:
        v = np.full(n, value, np.float32) if value is not None \
            else rng.standard_normal(n, dtype=np.float32) * 0.02
        w.add_tensor(name, v)

    E = s.n_embd
    mat("token_embd.weight", n_vocab, E)
    vec("output_norm.weight", E, 1.0)
    mat("output.weight", n_vocab, E)
    conv_dim = 2 * s.ssm_groups * s.ssm_state + s.ssm_inner
    for i in range(s.n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", E, 1.0)
        vec(p + "post_attention_norm.weight", E, 1.0)
        mat(p + "ffn_gate.weight", s.n_ff, E)
        mat(p + "ffn_up.weight", s.n_ff, E)
        mat(p + "ffn_down.weight", E, s.n_ff)
        if s.is_attention(i):
            mat(p + "attn_q.weight", 2 * s.head_dim * s.n_head, E)  # query and output gate
            mat(p + "attn_k.weight", s.head_dim * s.n_head_kv, E)
            mat(p + "attn_v.weight", s.head_dim * s.n_head_kv, E)
            mat(p + "attn_output.weight", E, s.head_dim * s.n_head)
            vec(p + "attn_q_norm.weight", s.head_dim, 1.0)
            vec(p + "attn_k_norm.weight", s.head_dim, 1.0)
        else:
            mat(p + "attn_qkv.weight", conv_dim, E)
            mat(p + "attn_gate.weight", s.ssm_inner, E)
            w.add_tensor(p + "ssm_conv1d.weight",
                         rng.standard_normal((conv_dim, s.conv_kernel), dtype=np.float32) * 0.02)
            vec(p + "ssm_dt.bias", s.ssm_v_heads)
            vec(p + "ssm_a", s.ssm_v_heads, -1.0)
            mat(p + "ssm_beta.weight", s.ssm_v_heads, E)
            mat(p + "ssm_alpha.weight", s.ssm_v_heads, E)
            vec(p + "ssm_norm.weight", s.ssm_state, 1.0)
            mat(p + "ssm_out.weight", E, s.ssm_inner)
    return _finish(w, tmp, path)


def _write_lfm2(path: Path, s: Lfm2Shape, seed: int) -> Path:
    """An lfm2 GGUF with the tensor names and shapes of llama.cpp's lfm2 loader (and gguf-py's
    MODEL_TENSORS[LFM2]): the output matrix is tied to the embeddings, as in LFM2's releases."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types, merges = vocab()
    w, tmp = _start(path, "lfm2", s)
    # per layer: 0 KV heads marks a short-conv (recurrent) layer
    w.add_head_count_kv([s.n_head_kv if s.is_attention(i) else 0 for i in range(s.n_layer)])
    w.add_rope_freq_base(s.rope_freq_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_shortconv_l_cache(s.l_cache)
    _add_vocab(w, tokens, types, merges, s)
    wtype = np.float16 if s.dtype == "f16" else np.float32

    def mat(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, _random_matrix(rng, rows, cols, wtype))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, np.float32))

    E, hd = s.n_embd, s.head_dim
    mat("token_embd.weight", len(tokens), E)
    ones("token_embd_norm.weight", E)          # lfm2's final norm keeps this legacy name
    for i in range(s.n_layer):
        p = f"blk.{i}."
        ones(p + "attn_norm.weight", E)
        ones(p + "ffn_norm.weight", E)
        mat(p + "ffn_gate.weight", s.n_ff, E)
        mat(p + "ffn_up.weight", s.n_ff, E)
        mat(p + "ffn_down.weight", E, s.n_ff)
        if s.is_attention(i):
            mat(p + "attn_q.weight", E, E)
            mat(p + "attn_k.weight", hd * s.n_head_kv, E)
            mat(p + "attn_v.weight", hd * s.n_head_kv, E)
            mat(p + "attn_output.weight", E, E)
            ones(p + "attn_q_norm.weight", hd)
            ones(p + "attn_k_norm.weight", hd)
        else:
            w.add_tensor(p + "shortconv.conv.weight",
                         rng.standard_normal((E, s.l_cache), dtype=np.float32) * 0.02)
            mat(p + "shortconv.in_proj.weight", 3 * E, E)
            mat(p + "shortconv.out_proj.weight", E, E)
    return _finish(w, tmp, path)


def model_shape_of(path: str | Path) -> Qwen35Shape | Lfm2Shape | None:
    """The shape stored by :func:`write_model` in a generated GGUF, else from its metadata; None if neither."""
    try:
        from gguf import GGUFReader
        r = GGUFReader(str(path))
        f = r.fields.get("ckptsim.shape")
        if f is not None:
            d = json.loads(bytes(f.parts[f.data[0]]).decode())
            if d.get("arch") == "lfm2":
                d["attn_layers"] = tuple(d["attn_layers"])
                return Lfm2Shape(**d)
            d["rope_sections"] = tuple(d["rope_sections"])
            return Qwen35Shape(**d)
        return shape_from_gguf(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
