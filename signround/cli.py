"""The ``signround`` command line: quantize (default), list, eval.

    signround --model DIR --scheme W4A16 --format auto_round --output_dir out/
    signround-best --model DIR --scheme W2A16G64        (recipe: 1000 iters, 512 samples)
    signround-light --model DIR                         (recipe: 50 iters, lr 5e-3)
    signround --model DIR --iters 0                     (optimised RTN; add --disable_opt_rtn for plain RTN)
    signround list format|scheme|recipe
    signround eval --model out/<dir> --ppl
    signround verify out/<dir> [--float_model DIR]      (every installed loader, logits compared)
    signround convert --model <GPTQ or AWQ dir> --output_dir out/   (to the auto_round format)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Sequence

__all__ = ["main", "main_best", "main_light", "build_quantize_parser"]

logger = logging.getLogger("signround")

SUBCOMMANDS = ("quantize", "list", "eval", "verify", "convert")


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and output")
    g.add_argument("--model", "--model_name", required=True,
                   help="local HF directory, hub id, .gguf file, or pkg:NAME (the .gguf inside an installed package)")
    g.add_argument("--output_dir", default="tmp_signround", help="parent directory of the exported model(s)")
    g.add_argument("--format", default=None,
                   help="comma-separated export formats, e.g. auto_round, fake or gguf:q4_k_m (see `signround list "
                        "format`) [auto_round; gguf:<mix> for a GGUF:<MIX> scheme]")
    g.add_argument("--dtype", default="auto", help="dtype to load the model in: auto, float32, bfloat16, float16")

    g = p.add_argument_group("scheme")
    g.add_argument("--scheme", default=None,
                   help="preset (see `signround list scheme`) [W4A16; with a gguf format, the format's GGUF:<MIX>]")
    g.add_argument("--bits", type=int, help="override the preset's weight bits (2-8)")
    g.add_argument("--group_size", type=int, help="override the group size: -1 per channel, 0 per tensor, or a power of 2")
    g.add_argument("--asym", action="store_true", help="asymmetric quantization (default: full-range symmetric)")
    g.add_argument("--layer_config", help='JSON: {"name or pattern": "W8A16" or {"bits": 8, ...}}')
    g.add_argument("--ignore_layers", "--fp_layers", help="comma-separated layer names/substrings to keep in float")
    g.add_argument("--quant_lm_head", action="store_true", help="quantize lm_head too (not when tied to embeddings)")
    g.add_argument("--print_plan", action="store_true", help="print the per-layer plan and exit")

    g = p.add_argument_group("tuning (SignRound)")
    g.add_argument("--iters", type=int,
                   help="tuning iterations per block; 0 = (optimised) RTN [recipe: 200; GGUF formats: 0]")
    g.add_argument("--lr", type=float, help="learning rate of the rounding offsets [1/iters, at most 1/50]")
    g.add_argument("--minmax_lr", type=float, help="learning rate of the range multipliers [lr]")
    g.add_argument("--nsamples", type=int, help="calibration rows [recipe: 128; optimised RTN (iters 0): 32]")
    g.add_argument("--seqlen", type=int, help="tokens per calibration row [recipe: 2048; optimised RTN (iters 0): 512]")
    g.add_argument("--batch_size", type=int, help="rows per tuning step [recipe: 8]")
    g.add_argument("--gradient_accumulate_steps", type=int, default=1, help="batches per tuning step [1]")
    g.add_argument("--dataset", help="calibration data spec, e.g. 'file.jsonl:num=64,signround:bundled' [bundled]")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--disable_opt_rtn", action="store_true", help="plain min/max RTN start (and plain RTN at iters 0)")
    g.add_argument("--disable_minmax_tuning", action="store_true", help="tune only the rounding, not the ranges")
    g.add_argument("--disable_quanted_input", action="store_true", help="tune on float inputs instead of quantized ones")
    g.add_argument("--early_stop", type=int, default=0, help="stop a block after N held-out checks without improvement")
    g.add_argument("--eval_every", type=int, default=0, help="iterations between held-out checks [iters/5]")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    g.add_argument("--tune_dtype", default="auto",
                   help="matmul precision inside the tuning loop: auto (bfloat16 where this machine runs it faster, "
                        "e.g. AMX CPUs; else float32), float32, bfloat16")
    g.add_argument("--low_gpu_mem_usage", action="store_true", help="keep cached activations on the CPU")
    g.add_argument("--enable_torch_compile", action="store_true", help="fuse the fake quantization with torch.compile")
    g.add_argument("--recipe", default=None, help="default, best, light, rtn, opt_rtn")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")


def build_quantize_parser(prog: str = "signround") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Quantize a causal LM to low-bit weights and export it.",
        epilog="Other commands: `signround list {format,scheme,recipe}`, `signround eval --model DIR --ppl`.",
    )
    _add_quantize_args(p)
    return p


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _quantize(argv: Sequence[str], prog: str, recipe: str) -> int:
    from .recipes import apply_recipe

    args = build_quantize_parser(prog).parse_args(argv)
    _setup_logging(args.quiet)
    opts = apply_recipe(args.recipe or recipe, {k: getattr(args, k) for k in ("iters", "lr", "nsamples", "seqlen",
                                                                               "batch_size")} |
                        {"disable_opt_rtn": args.disable_opt_rtn or None})
    layer_config = None
    if args.layer_config:
        try:
            layer_config = json.loads(args.layer_config)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--layer_config is not valid JSON: {e}")
    from .api import AutoRound

    t0 = time.time()
    ar = AutoRound(
        args.model, scheme=args.scheme, bits=args.bits, group_size=args.group_size, sym=False if args.asym else None,
        layer_config=layer_config, ignore_layers=args.ignore_layers, quant_lm_head=args.quant_lm_head,
        iters=opts.get("iters"), lr=opts.get("lr"), minmax_lr=args.minmax_lr, nsamples=opts.get("nsamples"),
        seqlen=opts.get("seqlen"), batch_size=opts.get("batch_size") or 8,
        gradient_accumulate_steps=args.gradient_accumulate_steps, dataset=args.dataset, seed=args.seed,
        disable_opt_rtn=bool(opts.get("disable_opt_rtn")), enable_minmax_tuning=not args.disable_minmax_tuning,
        enable_quanted_input=not args.disable_quanted_input, early_stop=args.early_stop, eval_every=args.eval_every,
        device=args.device, low_gpu_mem_usage=args.low_gpu_mem_usage, dtype=args.dtype, tune_dtype=args.tune_dtype,
        enable_torch_compile=args.enable_torch_compile,
        show_progress=not args.quiet,
    )
    if args.print_plan:
        print(ar.plan(args.format).table())
        return 0
    dirs = ar.quantize_and_save(args.output_dir, args.format)
    res = ar.result
    logger.info("done in %.1f s (quantization %.1f s); wrote %s", time.time() - t0, res.seconds if res else 0.0,
                ", ".join(str(d) for d in dirs))
    for d in dirs:
        print(d)
    return 0


def _list(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround list", description="List what signround supports.")
    p.add_argument("what", choices=["format", "scheme", "recipe"])
    args = p.parse_args(argv)
    if args.what == "format":
        from .formats import format_table

        print(format_table())
    elif args.what == "scheme":
        from .schemes import PRESETS

        for name, s in PRESETS.items():
            desc = "kept in 16-bit float" if not s.is_quantized else (
                f"int{s.bits}, group {s.group_size}, {'full-range sym' if s.sym else 'asym'}")
            if s.data_type == "gguf":
                desc = f"llama.cpp mix {name[5:].lower()} (per-tensor ggml types; default {s.ggml_type})"
            print(f"{name:10s} {desc}")
    else:
        from .recipes import RECIPES

        for name, r in RECIPES.items():
            print(f"{name:8s} " + (", ".join(f"{k}={v}" for k, v in r.items()) or
                                   "the API defaults: iters=200 (GGUF: 0), nsamples x seqlen 128 x 2048 "
                                   "(iters 0: 32 x 512), batch_size=8"))
    return 0


def _eval(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround eval",
                                description="Perplexity and KL divergence of an exported model on held-out text.")
    p.add_argument("--model", required=True, help="an exported directory (auto_round or fake format)")
    p.add_argument("--ppl", action="store_true", help="perplexity and KL divergence (the default and only metric)")
    p.add_argument("--float_model", help="the float model to compare with [the source recorded in signround.json]")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per evaluation window [512]")
    p.add_argument("--max_windows", type=int, default=40, help="at most this many windows [40]")
    p.add_argument("--text", help="a text file to evaluate on [the bundled held-out text]")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    from pathlib import Path

    from transformers import AutoTokenizer

    from .calib import heldout_text
    from .eval.metrics import evaluate, windows
    from .inference.load import load_quantized
    from .model.loading import load_model

    folder = Path(args.model)
    source = args.float_model
    run_file = folder / "signround.json"
    if source is None and run_file.is_file():
        source = json.loads(run_file.read_text()).get("source_model")
    model = load_quantized(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = Path(args.text).read_text() if args.text else heldout_text()
    rows = windows(tokenizer(text, return_tensors="pt").input_ids, args.seqlen, args.max_windows)
    float_model = None
    if source:
        if source.startswith("pkg:"):
            from .testing import package_gguf_path

            source = str(package_gguf_path(source[4:]))
        float_model = load_model(source, dtype="float32").model
    else:
        logger.warning("no float model known (pass --float_model): reporting perplexity only")
    res = evaluate(model, rows, float_model)
    print(json.dumps({"model": str(folder), "float_model": source, **res.as_dict()}, indent=1))
    return 0


def _verify(argv: Sequence[str]) -> int:
    from .verify import Tolerances

    t = Tolerances()
    p = argparse.ArgumentParser(prog="signround verify",
                                description="Load a checkpoint with signround and every installed third-party loader, "
                                            "run the same prompts, and compare logits (exit 1 on disagreement).")
    p.add_argument("folder", help="an exported directory (auto_round, auto_gptq, auto_awq)")
    p.add_argument("--float_model", help="the float model [the source_model recorded in signround.json]")
    p.add_argument("--no_float", action="store_true", help="compare loaders only, not against the float model")
    p.add_argument("--loaders", help="comma-separated subset of: " + ", ".join(_loader_names()))
    p.add_argument("--prompts", type=int, default=4, help="prompts (windows of held-out text) [4]")
    p.add_argument("--length", type=int, default=64, help="tokens per prompt [64]")
    for f in ("loader_rel_max", "loader_kl_max", "loader_argmax_min", "float_kl_max", "float_argmax_min"):
        p.add_argument(f"--{f}", type=float, default=getattr(t, f), help=f"[{getattr(t, f)}]")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    from pathlib import Path

    from .verify import prompt_ids, verify_checkpoint

    folder = Path(args.folder)
    tol = Tolerances(**{f: getattr(args, f) for f in ("loader_rel_max", "loader_kl_max", "loader_argmax_min",
                                                       "float_kl_max", "float_argmax_min")})
    float_model = None if args.no_float else args.float_model
    run_file = folder / "signround.json"
    if float_model is None and not args.no_float and run_file.is_file():
        source = json.loads(run_file.read_text()).get("source_model") or None
        if source and (source.startswith("pkg:") or Path(source).exists()):
            float_model = source
        elif source:
            logger.warning("source model %r recorded in signround.json is not found here; pass --float_model", source)
    loaders = [x.strip() for x in args.loaders.split(",")] if args.loaders else None
    report = verify_checkpoint(folder, float_model, loaders, tol, prompt_ids(folder, args.prompts, args.length))
    print(report.table(tol))
    return 0 if report.ok else 1


def _loader_names() -> list[str]:
    from .inference.third_party import LOADERS

    return list(LOADERS)


def _convert(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround convert",
                                description="Convert a GPTQ (v1/v2) or AWQ (GEMM) checkpoint to the auto_round format, "
                                            "keeping codes, scales and zero points exactly.")
    p.add_argument("--model", required=True, help="the GPTQ or AWQ checkpoint directory")
    p.add_argument("--output_dir", required=True, help="the directory to write (replaced atomically)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    from .convert import convert_to_auto_round

    print(convert_to_auto_round(args.model, args.output_dir))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "signround", recipe: str = "default") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "list":
            return _list(argv[1:])
        if argv and argv[0] == "eval":
            return _eval(argv[1:])
        if argv and argv[0] == "verify":
            return _verify(argv[1:])
        if argv and argv[0] == "convert":
            return _convert(argv[1:])
        if argv and argv[0] == "quantize":
            argv = argv[1:]
        return _quantize(argv, prog, recipe)
    except (ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        print(f"signround: error: {e}", file=sys.stderr)
        return 2


def main_best(argv: Sequence[str] | None = None) -> int:
    return main(argv, prog="signround-best", recipe="best")


def main_light(argv: Sequence[str] | None = None) -> int:
    return main(argv, prog="signround-light", recipe="light")


if __name__ == "__main__":
    raise SystemExit(main())
