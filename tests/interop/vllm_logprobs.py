"""Prompt log-probabilities from vLLM (CPU build) for given token ids; runs inside the vLLM venv.

    python vllm_logprobs.py MODEL_DIR IDS_JSON OUT_JSON

``IDS_JSON`` holds a list of prompts (lists of token ids). ``OUT_JSON`` gets, per prompt, the log-probability
vLLM gives each token from the second on (``prompt_logprobs``), plus the quantization method and linear
kernel vLLM chose. vLLM starts worker processes: keep the ``__main__`` guard (real-loaders §4).
"""

from __future__ import annotations

import json
import os
import sys


def main(model_dir: str, ids_path: str, out_path: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    prompts = json.load(open(ids_path))
    llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=256, enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = []
    for prompt, out in zip(prompts, outs):
        lps = out.prompt_logprobs  # [None, {token_id: Logprob}, ...]
        result.append([lps[i][prompt[i]].logprob for i in range(1, len(prompt))])
    quant = getattr(llm.llm_engine.model_config, "quantization", None)
    json.dump({"logprobs": result, "quantization": quant}, open(out_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
