"""The whole GGUF pipeline on the real SmolLM2-135M-Instruct, proven in llama.cpp and gguf-py.

- the CLI's opt-RTN q4_k_m file (imatrix from a little bundled calibration data) passes
  ``verify_gguf``: every tensor bit-identical between gguf-py's decoder and ours, llama.cpp's logits
  close to our dequantized model's;
- SignRound tuning (a few iterations) beats opt-RTN at the same type on held-out text, on the first
  blocks of the real model so that it stays fast.
"""

import copy

import pytest
import torch

from signround import AutoRound
from signround.cli import main as cli_main
from signround.verify_gguf import GGUFTolerances, verify_gguf

pytestmark = [pytest.mark.interop, pytest.mark.model]

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from signround.model.loading import load_model

    return load_model(str(smollm2_dir), dtype="float32")


def _first_blocks(model, n):
    """The real model cut to its first ``n`` decoder blocks (real weights, much faster)."""
    m = copy.deepcopy(model)
    m.model.layers = m.model.layers[:n]
    m.config.num_hidden_layers = n
    if getattr(m.config, "layer_types", None):
        m.config.layer_types = m.config.layer_types[:n]
    return m


def test_cli_q4_k_m_opt_rtn_file_runs_in_llama_cpp(tmp_path, smollm2_dir):
    args = ["--model", str(smollm2_dir), "--format", "gguf:q4_k_m", "--nsamples", "4", "--seqlen", "64",
            "--output_dir", str(tmp_path), "-q"]
    assert cli_main(args) == 0
    folder = tmp_path / f"{smollm2_dir.name}-gguf-q4_k_m"
    report = verify_gguf(folder, n_prompts=2, length=64)  # float model: source_model of signround.json
    print(report.table())
    assert report.tensors == 272 and not report.tensor_mismatch
    engine = report.rows[0]
    assert engine[0] == "llama.cpp" and engine[1].startswith("signround")
    assert report.ok, report.table()


def test_signround_tuning_beats_opt_rtn_at_the_same_type(smollm2, tmp_path):
    from signround.calib import heldout_text
    from signround.eval.metrics import evaluate, windows

    base = _first_blocks(smollm2.model, 3)
    rows = windows(smollm2.tokenizer(heldout_text(), return_tensors="pt").input_ids, 128, 4)
    kl, folders = {}, {}
    for iters in (0, 30):
        ar = AutoRound(copy.deepcopy(base), smollm2.tokenizer, iters=iters, nsamples=16, seqlen=64, batch_size=4,
                       dataset="signround:bundled", show_progress=False)
        folders[iters] = ar.quantize_and_save(tmp_path / str(iters), format="gguf:q2_k_s")[0]
        kl[iters] = evaluate(ar.model, rows, base).kl
    print(f"q2_k_s on 3 blocks of SmolLM2, held-out KL: opt-RTN {kl[0]:.4f}, SignRound-30 {kl[30]:.4f}")
    assert kl[30] < 0.95 * kl[0], kl
    # the tuned file holds what was evaluated: llama.cpp agrees with our decoding of it
    report = verify_gguf(folders[30], float_model=base, n_prompts=2, length=64,
                         tolerances=GGUFTolerances(float_kl_max=2.0))
    assert report.ok, report.table()


@pytest.mark.parametrize("fmt", ["gguf:q4_0", "gguf:q3_k_m", "gguf:q6_k"])
def test_verify_passes_on_tiny_exports_and_runs_from_the_directory(tmp_path, fmt):
    from .gguf_testlib import tiny_arch_model, tiny_tokenizer

    model = tiny_arch_model("llama")
    float_model = copy.deepcopy(model)
    ar = AutoRound(model, tiny_tokenizer(), iters=0, nsamples=4, seqlen=32, show_progress=False)
    (folder,) = ar.quantize_and_save(tmp_path, format=fmt)
    report = verify_gguf(folder, float_model=float_model, n_prompts=2, length=32)
    assert report.ok, report.table()
    assert report.tensors == 21 and report.rows[0][2] >= 0.9


def test_verify_flags_a_tensor_that_is_not_the_float_weight(tmp_path):
    from signround.export.gguf import write_gguf
    from signround.formats.gguf_tensors import gguf_plan
    from signround.formats.gguf_mixes import mix_spec
    from signround.quant.gguf import quantize_tensor

    from .gguf_testlib import tiny_arch_model, tiny_tokenizer

    model = tiny_arch_model("llama")
    w = model.model.layers[0].mlp.up_proj.weight
    wrong = quantize_tensor(torch.randn_like(w) * w.std(), "Q8_0")
    path = tmp_path / "bad.gguf"
    types = {n: c.qtype for n, c in gguf_plan(model, "q8_0").items()}
    write_gguf(model, tiny_tokenizer(), path, types, {"model.layers.0.mlp.up_proj.weight": wrong},
               file_type=int(mix_spec("q8_0").file_type))
    report = verify_gguf(path, float_model=model, n_prompts=2, length=32)
    assert not report.ok and report.worst_tensor[0] == "blk.0.ffn_up.weight" and report.worst_tensor[1] > 1.0
    assert "FAIL" in report.table()


def test_signround_verify_command_dispatches_gguf(tmp_path, capsys):
    from .gguf_testlib import tiny_arch_model, tiny_tokenizer

    src = tmp_path / "tiny-llama"
    tiny_arch_model("llama").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    args = ["--model", str(src), "--format", "gguf:q4_k_s", "--iters", "4", "--nsamples", "4", "--seqlen", "32",
            "--batch_size", "2", "--output_dir", str(tmp_path / "out"), "-q"]
    assert cli_main(args) == 0
    folder = tmp_path / "out" / "tiny-llama-gguf-q4_k_s"
    capsys.readouterr()
    assert cli_main(["verify", str(folder), "--prompts", "2", "--length", "32", "-q"]) == 0
    out = capsys.readouterr().out
    assert "21 bit-identical" in out and "llama.cpp" in out and "verdict: PASS" in out


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma3_text"])
def test_tuned_pipeline_runs_in_llama_cpp_for_every_architecture(tmp_path, arch):
    from .gguf_testlib import tiny_arch_model, tiny_tokenizer

    model = tiny_arch_model(arch)
    float_model = copy.deepcopy(model)
    ar = AutoRound(model, tiny_tokenizer(), iters=2, nsamples=4, seqlen=32, batch_size=2, show_progress=False)
    (folder,) = ar.quantize_and_save(tmp_path, format="gguf:q4_k_m")
    report = verify_gguf(folder, float_model=float_model, n_prompts=2, length=32)
    assert report.ok, report.table()
