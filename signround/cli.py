"""The ``signround`` command line: quantize (default), list, eval.

    signround --model DIR --scheme W4A16 --format auto_round --output_dir out/
    signround-best --model DIR --scheme W2A16G64        (recipe: 1000 iters, 512 samples)
    signround-light --model DIR                         (recipe: 50 iters, lr 5e-3)
    signround --model DIR --iters 0                     (optimised RTN; add --disable_opt_rtn for plain RTN)
    signround list format|scheme|recipe
    signround eval --model out/<dir> --ppl
    signround eval --model out/<dir> --tasks hellaswag,my_tasks/ [--limit N] [--eval_backend hf|vllm|llamacpp]
    signround verify out/<dir> [--float_model DIR]      (every installed loader, logits compared)
    signround convert --model <GPTQ or AWQ dir> --output_dir out/   (to the auto_round format)
    signround generate --model out/<dir> --prompt "..." [--prompt "..."] [--max_new_tokens N] [--backend B]   (CPU)
    torchrun --nproc_per_node N -m signround --model DIR ...         (data parallel: 1/N of the rows per rank)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Sequence

from .errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, BadInputError, CheckFailedError, SignroundError
from .options import OPTIONS, Option

__all__ = ["main", "main_best", "main_light", "build_quantize_parser"]

logger = logging.getLogger("signround")

SUBCOMMANDS = ("quantize", "list", "eval", "verify", "convert", "generate")


def _add_option(group: argparse._ArgumentGroup, opt: Option) -> None:
    """One table option as a flag: ``--name VALUE``, or a switch that sets True (or False, e.g. ``--asym``)."""
    if opt.cli == "none":
        return
    if opt.cli == "true":
        group.add_argument(f"--{opt.name}", *opt.aliases, dest=opt.name, action="store_const", const=True,
                           default=None, help=opt.help_text())
    elif opt.cli.startswith("false:"):
        group.add_argument(opt.cli[len("false:"):], *opt.aliases, dest=opt.name, action="store_const", const=False,
                           default=None, help=opt.help_text())
    else:
        kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
        kind = int if int in kinds else float if float in kinds else str
        group.add_argument(f"--{opt.name}", *opt.aliases, dest=opt.name, type=kind, default=None,
                           metavar=opt.metavar, help=opt.help_text())


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and output")
    g.add_argument("--model", "--model_name", required=True,
                   help="local HF directory, hub id, .gguf file, or pkg:NAME (the .gguf inside an installed package)")
    g.add_argument("--output_dir", default="tmp_signround",
                   help="parent directory of the exported model(s); each format gets a new child directory [tmp_signround]")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a previous signround output of the same name (never anything else)")
    g.add_argument("--format", default=None,
                   help="comma-separated export formats, e.g. auto_round, fake or gguf:q4_k_m (see `signround list "
                        "format`) [auto_round; gguf:<mix> for a GGUF:<MIX> scheme]")
    groups: dict[str, argparse._ArgumentGroup] = {"model and output": g}
    groups["scheme"] = p.add_argument_group("scheme")
    groups["scheme"].add_argument("--scheme", default=None,
                                  help="preset (see `signround list scheme`) [W4A16; with a gguf format, its GGUF:<MIX>]")
    groups["scheme"].add_argument("--print_plan", action="store_true", help="print the per-layer plan and exit")
    for opt in OPTIONS:
        if opt.group not in groups:
            groups[opt.group] = p.add_argument_group(opt.group)
        _add_option(groups[opt.group], opt)
    out = groups["runtime"]
    out.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    out.add_argument("-v", "--verbose", action="store_true", help="debug logs, including the per-layer plan table")


def build_quantize_parser(prog: str = "signround") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Quantize a causal LM to low-bit weights and export it.",
        epilog="Other commands: `signround list {format,scheme,recipe}`, `signround eval --model DIR --ppl`, "
               "`signround eval --model DIR --tasks T`, `signround verify DIR`, `signround convert --model DIR "
               "--output_dir DIR`, `signround generate --model DIR --prompt TEXT`. "
               "Exit codes: 0 done, 2 bad input (nothing written), 1 a check failed.",
    )
    _add_quantize_args(p)
    return p


def _setup_logging(quiet: bool, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("signround").setLevel(level)
    # transformers imports torchao when it is installed; on a CPU machine its import warns about CUDA-only libraries
    # and Triton, and registers enums that torch's pytree warns about: nothing a user of this command can act on.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _layer_config(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"--layer_config is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise BadInputError(f"--layer_config must be a JSON object {{\"layer or pattern\": scheme}}, got "
                            f"{type(value).__name__}: {text}")
    return value


def _quantize(argv: Sequence[str], prog: str, recipe: str) -> int:
    args = build_quantize_parser(prog).parse_args(argv)
    _setup_logging(args.quiet, args.verbose)
    options = {o.name: getattr(args, o.name) for o in OPTIONS if o.cli != "none" and getattr(args, o.name) is not None}
    options["layer_config"] = _layer_config(args.layer_config)
    options.setdefault("recipe", recipe)
    options["show_progress"] = not args.quiet
    from .api import AutoRound
    from .record import source_name
    from .request import QuantRequest

    # Every check that needs no model runs before it loads: options, scheme, formats, output directories.
    request = QuantRequest.build(args.scheme, options)
    targets = request.output_dirs(source_name(args.model), args.output_dir, args.format)
    if not args.print_plan:
        request.check_outputs(targets, args.overwrite)
        if options.get("resume"):
            from .tune.resume import check_resumable, work_dir_for

            check_resumable(work_dir_for(targets[0]))
    t0 = time.time()
    ar = AutoRound(args.model, scheme=args.scheme, **options)
    if args.print_plan:
        print(ar.plan(args.format).table())
        return 0
    try:
        dirs = ar.quantize_and_save(args.output_dir, args.format, overwrite=args.overwrite)
    finally:
        _end_process_group()
    if not ar.run.runtime.parallel.is_main:  # data parallel (torchrun): rank 0 wrote and reports
        return 0
    res = ar.result
    logger.info("done in %.1f s (quantization %.1f s); wrote %s", time.time() - t0, res.seconds if res else 0.0,
                ", ".join(str(d) for d in dirs))
    for d in dirs:
        print(d)
    return 0


def _end_process_group() -> None:
    """Under torchrun the run initialised a process group (``DataParallel.from_environment``); close it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _list(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround list", description="List what signround supports.")
    p.add_argument("what", choices=["format", "scheme", "recipe"])
    args = p.parse_args(argv)
    if args.what == "format":
        from .formats import format_table

        print(format_table())
    elif args.what == "scheme":
        from .schemes import PRESETS

        rows = [("preset", "weights", "activations")]
        for name, s in PRESETS.items():
            weights, acts = s.describe()
            if s.data_type == "gguf":
                weights = f"llama.cpp mix {name[5:].lower()} (per-tensor ggml types; default {s.ggml_type})"
            rows.append((name, weights, acts))
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        for r in rows:
            print(f"{r[0]:{w0}s}  {r[1]:{w1}s}  {r[2]}")
    else:
        from .recipes import RECIPES

        from .options import option

        defaults = "; ".join(f"{n} {option(n).resolved or option(n).default}"
                             for n in ("iters", "nsamples", "seqlen", "batch_size"))
        for name, r in RECIPES.items():
            print(f"{name:8s} " + (", ".join(f"{k}={v}" for k, v in r.items()) or f"the defaults: {defaults}"))
    return 0


def _eval(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround eval",
                                description="Perplexity and KL divergence of an exported model on held-out text; "
                                            "with --tasks, lm-eval tasks instead.")
    p.add_argument("--model", required=True, help="an exported directory (auto_round or fake format); with --tasks, "
                                                  "any format we write, a float HF directory, or a .gguf")
    p.add_argument("--ppl", action="store_true", help="perplexity and KL divergence (the default and only metric)")
    p.add_argument("--float_model", help="the float model to compare with [the source recorded in signround.json]")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per evaluation window [512]")
    p.add_argument("--max_windows", type=int, default=40, help="at most this many windows [40]")
    p.add_argument("--text", help="a text file to evaluate on [the bundled held-out text]")
    p.add_argument("--eval_output", help="lm-eval results file [MODEL/lm_eval_results.json]")
    from .options import EVAL_OPTIONS

    g = p.add_argument_group("lm-eval (with --tasks)")
    for opt in EVAL_OPTIONS:
        _add_option(g, opt)
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    if args.tasks:
        return _lm_eval(args)
    from pathlib import Path

    from transformers import AutoTokenizer

    from .calib import heldout_text
    from .eval.metrics import evaluate, windows
    from .inference.load import load_quantized
    from .model.loading import load_model

    from .record import float_model_note, recorded_float_model, resolve_source

    folder = Path(args.model)
    source = resolve_source(args.float_model) if args.float_model else recorded_float_model(folder)
    model = load_quantized(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = Path(args.text).read_text() if args.text else heldout_text()
    rows = windows(tokenizer(text, return_tensors="pt").input_ids, args.seqlen, args.max_windows)
    float_model = None
    if source:
        float_model = load_model(source, dtype="float32", with_tokenizer=False).model
    else:
        logger.warning("no float model known (pass --float_model): reporting perplexity only")
    res = evaluate(model, rows, float_model)
    note = {"float_model_note": n} if source and (n := float_model_note(source)) else {}
    print(json.dumps({"model": str(folder), "float_model": source, **note, **res.as_dict()}, indent=1))
    return 0


def _lm_eval(args: argparse.Namespace) -> int:
    """``signround eval --tasks``: lm-eval on the model; exit 1 when a task failed (with --eval_task_by_task)."""
    from .eval.lmeval import run_lm_eval
    from .options import EVAL_OPTIONS, UserOptions

    opts = UserOptions({o.name: getattr(args, o.name) for o in EVAL_OPTIONS})  # type and range checks
    res = run_lm_eval(args.model, opts.get("tasks"), backend=opts.get("eval_backend"), limit=opts.get("limit"),
                      num_fewshot=opts.get("num_fewshot"), batch_size=opts.get("eval_bs"),
                      task_by_task=opts.get("eval_task_by_task"), output=args.eval_output)
    if res.get("errors"):
        raise CheckFailedError(f"{len(res['errors'])} task(s) failed: {', '.join(res['errors'])}")
    return 0


def _verify(argv: Sequence[str]) -> int:
    from .verify import Tolerances

    t = Tolerances()
    p = argparse.ArgumentParser(prog="signround verify",
                                description="Load a checkpoint with signround and every installed third-party loader, "
                                            "run the same prompts, and compare logits (exit 1 on disagreement).")
    p.add_argument("folder", nargs="?", help="an exported directory (auto_round, auto_gptq, auto_awq, llm_compressor)")
    p.add_argument("--model", help="the same directory, named as eval, generate and convert name it")
    p.add_argument("--float_model", help="the float model [the source_model recorded in signround.json]")
    p.add_argument("--no_float", action="store_true", help="compare loaders only, not against the float model")
    p.add_argument("--loaders", help="comma-separated subset of: " + ", ".join(_loader_names()))
    p.add_argument("--prompts", type=int, default=4, help="prompts (windows of held-out text) [4]")
    p.add_argument("--length", type=int, default=64, help="tokens per prompt [64]")
    for f in ("loader_rel_max", "loader_kl_max", "loader_argmax_min", "float_kl_max", "float_argmax_min"):
        p.add_argument(f"--{f}", type=float, default=getattr(t, f), help=f"[{getattr(t, f)}]")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if (args.folder is None) == (args.model is None):
        p.error("give the checkpoint directory once: `signround verify DIR` or `signround verify --model DIR`")
    _setup_logging(args.quiet)
    from pathlib import Path

    from .verify import prompt_ids, verify_checkpoint

    folder = Path(args.folder or args.model)
    tol = Tolerances(**{f: getattr(args, f) for f in ("loader_rel_max", "loader_kl_max", "loader_argmax_min",
                                                       "float_kl_max", "float_argmax_min")})
    from .record import recorded_float_model

    float_model = None if args.no_float else (args.float_model or recorded_float_model(folder))
    loaders = [x.strip() for x in args.loaders.split(",")] if args.loaders else None
    report = verify_checkpoint(folder, float_model, loaders, tol, prompt_ids(folder, args.prompts, args.length))
    print(report.table(tol))
    return report.exit_code


def _loader_names() -> list[str]:
    from .inference.third_party import LOADERS

    return list(LOADERS)


def _convert(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="signround convert",
                                description="Convert a GPTQ (v1/v2) or AWQ (GEMM) checkpoint to the auto_round format, "
                                            "keeping codes, scales and zero points exactly.")
    p.add_argument("--model", required=True, help="the GPTQ or AWQ checkpoint directory")
    p.add_argument("--output_dir", required=True,
                   help="the directory to write: new or empty (or a previous signround output, with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous signround output (never anything else)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    from .convert import convert_to_auto_round

    print(convert_to_auto_round(args.model, args.output_dir, overwrite=args.overwrite))
    return 0


def _generate(argv: Sequence[str]) -> int:
    from .inference.backends import backend_names

    p = argparse.ArgumentParser(prog="signround generate",
                                description="Greedy text from a quantized (or float) checkpoint, streamed to stdout; "
                                            "the speed goes to stderr.")
    p.add_argument("--model", required=True, help="the checkpoint directory (with its tokenizer)")
    p.add_argument("--prompt", required=True, action="append",
                   help="the prompt; given several times, the prompts decode as one left-padded batch")
    p.add_argument("--max_new_tokens", type=int, default=64, help="[64]")
    p.add_argument("--backend", choices=backend_names(), help="force one inference backend [the best per layer]")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype [bfloat16: the packed int4/int8 kernels' one]")
    p.add_argument("--threads", type=int, help="torch CPU threads [torch's default]")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.quiet)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .inference.generate import generate_text

    result = generate_text(args.model, args.prompt, args.max_new_tokens, args.backend, args.dtype)
    print(result.summary(), file=sys.stderr)
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
        if argv and argv[0] == "generate":
            return _generate(argv[1:])
        if argv and argv[0] == "quantize":
            argv = argv[1:]
        return _quantize(argv, prog, recipe)
    except CheckFailedError as e:
        print(f"signround: check failed: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (SignroundError, ValueError, OSError) as e:  # bad input: one line naming the culprit
        print(f"signround: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main_best(argv: Sequence[str] | None = None) -> int:
    return main(argv, prog="signround-best", recipe="best")


def main_light(argv: Sequence[str] | None = None) -> int:
    return main(argv, prog="signround-light", recipe="light")


if __name__ == "__main__":
    raise SystemExit(main())
