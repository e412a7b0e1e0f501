"""A hub id (``org/name``) resolved to a local snapshot folder, so it is streamed like any local checkpoint.

Only what quantization reads is fetched: config, tokenizer and generation files, and the weights as
safetensors (the ``.bin`` files only when the repository has no safetensors). With ``HF_HUB_OFFLINE=1``
``snapshot_download`` answers from the local cache (``HF_HUB_CACHE``) alone.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError

__all__ = ["looks_like_hub_id", "resolve_hub_id"]

_META = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt",
         "added_tokens.json", "*.model", "*.tiktoken", "chat_template*"]
_SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` or ``name`` that is not a local path (no leading ``.``, ``/``, ``~``, one ``/`` at most)."""
    return (bool(source) and not Path(source).exists() and not source.startswith((".", "/", "~"))
            and source.count("/") <= 1 and not source.endswith(".gguf"))


def resolve_hub_id(source: str, revision: str | None = None) -> Path:
    """The local snapshot of hub id ``source`` with its config, tokenizer and weights (downloaded when needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    def fetch(patterns: list[str]) -> Path:
        return Path(snapshot_download(source, revision=revision, allow_patterns=_META + patterns))

    try:
        folder = fetch(_SAFETENSORS)
        if not any(folder.glob("*.safetensors")):
            folder = fetch(_BIN)
    except HFValidationError as e:
        raise BadInputError(f"model {source!r} is neither a local path nor a valid hub id: {e}") from e
    except Exception as e:  # offline and not cached, unknown repository, gated, network errors
        raise BadInputError(f"model {source!r} is not a local path and the Hugging Face hub did not provide it "
                            f"({type(e).__name__}: {str(e).strip()[:300]}); check the id, or set HF_HUB_OFFLINE=1 "
                            f"with a populated HF_HUB_CACHE") from e
    if not (folder / "config.json").is_file():
        raise BadInputError(f"hub model {source!r}: its snapshot {folder} has no config.json (not a transformers "
                            f"model?)")
    return folder
