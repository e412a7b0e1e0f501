"""Synthetic Llama checkpoints with real shapes and random weights, for memory and time benchmarks at scale.

    python benchmarks/synthetic.py ci-100m            # -> ~/.cache/signround/scale/ci-100m
    python benchmarks/synthetic.py llama-3.2-1b --root /some/dir

Weights: normal(0, 0.02) for every Linear and the embedding, ones for the RMSNorm weights (so
activations stay finite through all layers), deterministic: each tensor gets its own generator seeded
from the checkpoint's seed and the tensor's index. The files are written tensor by tensor straight
into safetensors shards (the header is computed first from the known shapes), so the generator holds
one tensor in memory at a time, never a whole shard. Shards are named like Hugging Face's
(``model-00001-of-00004.safetensors``) with a ``model.safetensors.index.json``; the folder gets a
``config.json`` and the tokenizer files of ``signround.testing.smollm2_hf_dir()`` (vocabulary 49152,
at most the synthetic vocabulary, so every token id is a valid row of the embedding).

A finished checkpoint has a ``synthetic.json`` stamp (spec and seed); a folder with the same stamp is
reused, anything else under the target name is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

__all__ = ["SPECS", "Spec", "tensor_shapes", "build", "default_root", "checkpoint_bytes"]

GB = 1000**3
LLAMA3_ROPE_8B = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}
LLAMA3_ROPE_1B = {**LLAMA3_ROPE_8B, "factor": 32.0}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt")
STAMP = "synthetic.json"


@dataclass(frozen=True)
class Spec:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    dtype: str = "bfloat16"
    shard_bytes: int = 5 * GB
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    max_positions: int = 131072
    seed: int = 0
    extra: dict = field(default_factory=dict)  # more config.json keys


SPECS: dict[str, Spec] = {
    # Meta-Llama-3.1-8B's shapes (config of the release: untied head, llama3 rope scaling factor 8)
    "llama-3.1-8b": Spec(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256, tied=False,
                         rope_scaling=LLAMA3_ROPE_8B),
    # Llama-3.2-1B's shapes (tied embeddings, factor 32)
    "llama-3.2-1b": Spec(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256, tied=True,
                         rope_scaling=LLAMA3_ROPE_1B),
    # ~113M parameters in float32 (~453 MB), 4 shards. The vocabulary is SmolLM2's tokenizer's 49152 (not
    # 32000): the calibration text is tokenized by that tokenizer, so a smaller embedding would get ids
    # past its end.
    "ci-100m": Spec(hidden=768, intermediate=2048, layers=12, heads=12, kv_heads=4, vocab=49152, tied=True,
                    dtype="float32", shard_bytes=120 * 1000**2, max_positions=4096, rope_scaling=None),
}
# the baseline of the CI memory test: ci-100m cut to one block (~177 MB, 2 shards): the same code path, the
# same largest tensor (the 151 MB embedding), so that what grows from it to ci-100m is what the other
# 11 blocks cost (nothing, once weights are streamed block by block)
SPECS["ci-1layer"] = replace(SPECS["ci-100m"], layers=1)

_DTYPES = {"bfloat16": (torch.bfloat16, "BF16"), "float32": (torch.float32, "F32"), "float16": (torch.float16, "F16")}


def default_root() -> Path:
    return Path(os.environ.get("SIGNROUND_CACHE", Path.home() / ".cache" / "signround")) / "scale"


def tensor_shapes(spec: Spec) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint in Hugging Face's order: (name, shape)."""
    h, head_dim = spec.hidden, spec.hidden // spec.heads
    kv = spec.kv_heads * head_dim
    out = [("model.embed_tokens.weight", (spec.vocab, h))]
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (spec.intermediate, h)),
                (p + "mlp.up_proj.weight", (spec.intermediate, h)),
                (p + "mlp.down_proj.weight", (h, spec.intermediate))]
    out.append(("model.norm.weight", (h,)))
    if not spec.tied:
        out.append(("lm_head.weight", (spec.vocab, h)))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def checkpoint_bytes(spec: Spec) -> int:
    size = _DTYPES[spec.dtype][0].itemsize
    return sum(_numel(s) for _, s in tensor_shapes(spec)) * size


def parameter_count(spec: Spec) -> int:
    return sum(_numel(s) for _, s in tensor_shapes(spec))


def _make_tensor(spec: Spec, index: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    dtype = _DTYPES[spec.dtype][0]
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + index)
    t = torch.empty(shape, dtype=dtype)
    rows = max(1, (64 << 20) // (shape[-1] * 4))  # fill in ~64 MB float32 slices: bounded temporaries
    for start in range(0, shape[0], rows):
        t[start:start + rows] = torch.empty((min(rows, shape[0] - start),) + shape[1:]).normal_(0.0, 0.02, generator=g)
    return t


def _plan_shards(spec: Spec) -> list[list[tuple[int, str, tuple[int, ...]]]]:
    """Tensors grouped greedily, in order, into shards of at most ``shard_bytes`` (a bigger tensor alone)."""
    size = _DTYPES[spec.dtype][0].itemsize
    shards: list[list] = [[]]
    used = 0
    for i, (name, shape) in enumerate(tensor_shapes(spec)):
        nbytes = _numel(shape) * size
        if shards[-1] and used + nbytes > spec.shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((i, name, shape))
        used += nbytes
    return shards


def _write_shard(spec: Spec, path: Path, items: list[tuple[int, str, tuple[int, ...]]]) -> int:
    """Write one safetensors file tensor by tensor; returns its data bytes."""
    dtype, code = _DTYPES[spec.dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, name, shape in items:
        nbytes = _numel(shape) * dtype.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, name, shape in items:
            t = _make_tensor(spec, i, name, shape).contiguous()
            f.write(t.view(torch.uint8).numpy().data)
            del t
    return offset


def _config(spec: Spec, tokenizer_dir: Path) -> dict:
    tok_cfg = json.loads((tokenizer_dir / "config.json").read_text()) if (tokenizer_dir / "config.json").is_file() else {}
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.hidden, "intermediate_size": spec.intermediate, "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads, "head_dim": spec.hidden // spec.heads,
        "vocab_size": spec.vocab, "tie_word_embeddings": spec.tied, "max_position_embeddings": spec.max_positions,
        "rope_theta": spec.rope_theta, "rope_scaling": spec.rope_scaling, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True, "torch_dtype": spec.dtype,
        # the tokenizer's special ids (SmolLM2's), so that calibration rows and the config agree
        "bos_token_id": tok_cfg.get("bos_token_id", 1), "eos_token_id": tok_cfg.get("eos_token_id", 2),
    }
    cfg.update(spec.extra)
    return cfg


def _stamp(name: str, spec: Spec) -> dict:
    return {"name": name, "spec": asdict(spec), "format": 1}


def build(name: str, root: "str | Path | None" = None, tokenizer_dir: "str | Path | None" = None,
          log=print) -> Path:
    """The checkpoint ``name`` (a key of SPECS) under ``root``: reused when already complete, else written."""
    spec = SPECS[name]
    target = Path(root or default_root()) / name
    stamp = target / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(_stamp(name, spec))):
        return target
    if tokenizer_dir is None:
        from signround.testing import smollm2_hf_dir

        tokenizer_dir = smollm2_hf_dir()
    tokenizer_dir = Path(tokenizer_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards = _plan_shards(spec)
        weight_map, total = {}, 0
        for k, items in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            log(f"  {name}: writing {fname} ({len(items)} tensors)")
            total += _write_shard(spec, tmp / fname, items)
            weight_map.update({n: fname for _, n, _ in items})
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(_config(spec, tokenizer_dir), indent=2) + "\n")
        for f in TOKENIZER_FILES:
            if (tokenizer_dir / f).is_file():
                shutil.copy2(tokenizer_dir / f, tmp / f)
        (tmp / STAMP).write_text(json.dumps(_stamp(name, spec), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", choices=sorted(SPECS))
    ap.add_argument("--root", default=None, help=f"parent folder [{default_root()}]")
    args = ap.parse_args()
    for name in args.names:
        spec = SPECS[name]
        print(f"{name}: {parameter_count(spec) / 1e6:.1f}M parameters, {checkpoint_bytes(spec) / GB:.2f} GB "
              f"{spec.dtype}, {len(_plan_shards(spec))} shards")
        print(build(name, args.root))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
