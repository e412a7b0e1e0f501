"""Write checkpoints with the PyPI auto-round package (its own RTN, iters=0) for the interop tests.

Run as a script: ``python autoround_export.py OUT``. auto-round's auto_round export goes through a
model-free path that starts worker processes, hence the ``__main__`` guard (real-loaders §2 gotcha a).
No calibration data is needed (``disable_opt_rtn``), so it runs offline. Writes ``OUT/src`` (the tiny
float model with a byte-level tokenizer) and one directory per case below, each with a ``DONE`` file
naming the checkpoint folder inside it (auto_gptq/auto_awq outputs land in a ``<model>-w4g128`` subfolder).
"""

from __future__ import annotations

import sys
from pathlib import Path

CASES = {  # name -> (AutoRound keyword arguments, format)
    "gptq_w4": (dict(scheme="W4A16"), "auto_gptq"),
    "gptq_w2g64": (dict(scheme="W2A16G64"), "auto_gptq"),
    "gptq_w4_asym": (dict(scheme="W4A16", sym=False), "auto_gptq"),
    "awq_w4": (dict(scheme="W4A16"), "auto_awq"),
    "awq_w4_asym": (dict(scheme="W4A16", sym=False), "auto_awq"),
    "ar_w4": (dict(scheme="W4A16"), "auto_round"),
    "ar_w3g64_asym": (dict(scheme="W3A16", sym=False, group_size=64), "auto_round"),
    "ar_w8": (dict(scheme="W8A16"), "auto_round"),
}


def main(out: Path) -> None:
    from auto_round import AutoRound

    from signround.testing import tiny_model
    from tests.interop.common import byte_tokenizer

    src = out / "src"
    tiny_model("llama").save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    for name, (kwargs, fmt) in CASES.items():
        ar = AutoRound(str(src), iters=0, disable_opt_rtn=True, device_map="cpu", nsamples=1, seqlen=16, **kwargs)
        ar.quantize_and_save(str(out / name), format=fmt)
        config = next((out / name).rglob("config.json"))
        (out / name / "DONE").write_text(str(config.parent))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
