"""Time GGUF export of SmolLM2-135M-Instruct: our quantizer per mix and search mode, and llama.cpp's own.

    python benchmarks/gguf_speed.py [--mixes q4_k_m,q3_k_s] [--threads 1]

Each row: mix, mode, seconds for ``export_gguf`` (quantize + write), file size, bits per weight of the
2-D weights, and whether the file is byte-identical to llama.cpp's (``llama_model_quantize`` from our
f32 file, no imatrix; only for the ``ref`` mode, which is llama.cpp's quantizer). The imatrix rows use
a synthetic heavy-tailed importance (timing only). Torch runs on ``--threads`` threads: on a shared
2-core machine one thread is much faster (OpenMP waits on a busy core).

Recorded on the 2-core development VM (shared with other jobs), torch 2.13 CPU, 1 thread
(bpw = file bits per 2-D weight; the tied 49152 x 576 embedding is Q8_0 and most 576-wide rows fall back
from k-quants to Q5_0/Q4_0/Q8_0, so SmolLM2's files are larger than the mix names suggest):

       mix   mode   export s     MB   bpw (file)   same as llama.cpp   llama.cpp s
    q4_k_m    ref        7.0  105.5         6.27             272/272           2.2
    q4_k_m    rtn        2.5  105.5         6.27                   -             -
    q4_k_m imatrix      18.2  105.5         6.27                   -             -
    q3_k_s    ref        5.1   88.2         5.25             272/272           1.1
    q3_k_s    rtn        2.6   88.2         5.25                   -             -
    q3_k_s imatrix      15.0   88.2         5.25                   -             -
    q2_k_s imatrix      24.2   86.1         5.12                   -             -

With the same imatrix handed to ``llama_model_quantize``, the q2_k_s file was also 272/272 identical
(checked by hand; ``tests/gguf/test_llama_cpp.py`` checks it on a small model for q4_k_m, q2_k_s, q4_0).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _same_as_llama(ours: Path, theirs: Path) -> str:
    from signround.export.gguf import read_gguf_tensors

    a, b = read_gguf_tensors(ours), read_gguf_tensors(theirs)
    same = sum(a[n][0] is b[n][0] and np.array_equal(np.asarray(a[n][2]), np.asarray(b[n][2])) for n in a)
    return f"{same}/{len(a)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default="q4_k_m,q3_k_s,q2_k_s")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp's quantizer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from signround.export.gguf import export_gguf
    from signround.formats.gguf_tensors import model_tensors
    from signround.method import Start
    from signround.testing import smollm2_hf_dir

    folder = smollm2_hf_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    n_weights = sum(s.tensor.numel() for s in model_tensors(model) if s.tensor.dim() == 2)
    g = torch.Generator().manual_seed(0)
    imatrix = {s.hf_name.removesuffix(".weight"): torch.exp(2 * torch.randn(s.tensor.shape[1], generator=g))
               for s in model_tensors(model) if s.hf_name.endswith("proj.weight")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f32 = export_gguf(model, tokenizer, tmp / "f32.gguf", "f32")
        for mix in args.mixes.split(","):
            for mode in ("ref", "rtn", "imatrix"):
                if mix == "q2_k_s" and mode != "imatrix":
                    continue  # llama.cpp requires an imatrix for q2_k_s
                start = time.perf_counter()
                path = export_gguf(model, tokenizer, tmp / f"{mix}-{mode}.gguf", mix,
                                   imatrix=imatrix if mode == "imatrix" else None,
                                   start=Start.MINMAX if mode == "rtn" else Start.SEARCH)
                seconds = time.perf_counter() - start
                size = path.stat().st_size
                same, llama_s = "-", "-"
                if mode == "ref" and not args.no_llama:
                    import llama_cpp

                    params = llama_cpp.llama_model_quantize_default_params()
                    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
                    params.nthread = args.threads
                    start = time.perf_counter()
                    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp / "llama.gguf").encode(), params) == 0
                    llama_s = f"{time.perf_counter() - start:.1f}"
                    same = _same_as_llama(path, tmp / "llama.gguf")
                rows.append((mix, mode, f"{seconds:.1f}", f"{size / 1e6:.1f}", f"{8 * size / n_weights:.2f}", same, llama_s))
    header = ("mix", "mode", "export s", "MB", "bpw (file)", "same as llama.cpp", "llama.cpp s")
    for r in [header, *rows]:
        print("  ".join(f"{c:>10s}" for c in r))


if __name__ == "__main__":
    main()
