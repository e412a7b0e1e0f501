"""The quantization plan: every Linear of the model resolved to a scheme, or to the reason it stays float.

The plan is a plain value computed before any calibration, printable (``--print_plan``) and
serialisable. Everything that can be known to fail is checked here: a scheme a format cannot
hold, a fused group (q/k/v, gate/up) with mixed settings for a format whose engines fuse it,
a layer_config key that matches nothing (a warning naming it).

layer_config key precedence (AutoRound reference §2.10, STYLE rule 12): an exact layer name wins;
then the first key that is a plain substring of the name; then the first regex (``re.search``).

With a GGUF format the mix decides each tensor's ggml type as llama.cpp would (``formats/gguf_mixes``:
attn_v/ffn_down upgrades, output in Q6_K, shape fallbacks), reasons included; the lm_head is part of
the file (``output.weight``) whatever ``quant_lm_head`` says, and the tensors that are no Linear
(``token_embd``) are listed in ``QuantPlan.extra``. layer_config may still name a ggml type per layer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch

from .formats import FORMATS, Format, check_group_sizes, check_layer, gguf_mix, is_gguf
from .model.arch import ArchFacts, get_module, tied_embeddings
from .schemes import KEEP, QuantScheme, gguf_scheme, resolve_scheme

__all__ = ["LayerPlan", "QuantPlan", "build_plan", "linear_shape", "is_linear"]

logger = logging.getLogger(__name__)

_REGEX_CHARS = re.compile(r"(\.\*|[\^\$\|\(\)\[\]\?\+\\])")
SHAPE_MULTIPLE = 32  # integer packing needs whole int32 words along both dimensions


def is_linear(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_shape(module: torch.nn.Module) -> tuple[int, int]:
    """(out_features, in_features) for nn.Linear and transformers' transposed Conv1D alike."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features, module.in_features
    w = module.weight
    return w.shape[1], w.shape[0]


@dataclass(frozen=True)
class LayerPlan:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    scheme: QuantScheme
    reason: str
    block: int | None  # index of the decoder block holding the layer, None outside blocks
    conv1d: bool = False

    @property
    def quantized(self) -> bool:
        return self.scheme.is_quantized


@dataclass
class QuantPlan:
    layers: dict[str, LayerPlan]
    default: QuantScheme
    blocks_prefix: str
    n_blocks: int
    lm_head: str
    formats: list[Format] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # tensors a format writes itself (GGUF token_embd) -> type/why

    def block_layers(self, index: int) -> list[LayerPlan]:
        return [p for p in self.layers.values() if p.block == index and p.quantized]

    def outside_layers(self) -> list[LayerPlan]:
        return [p for p in self.layers.values() if p.block is None and p.quantized]

    def quantized(self) -> list[LayerPlan]:
        return [p for p in self.layers.values() if p.quantized]

    def table(self) -> str:
        rows = [("layer", "shape", "scheme", "why")]
        for p in self.layers.values():
            rows.append((p.name, f"{p.shape[0]}x{p.shape[1]}", p.scheme.short_name() if p.quantized else "float", p.reason))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2].ljust(w[2])}  {r[3]}" for r in rows]
        lines.insert(1, "-" * max(len(x) for x in lines))
        for name, what in self.extra.items():
            lines.append(f"{name}  (written by the format)  {what}")
        n_q = len(self.quantized())
        lines.append(f"{n_q} of {len(self.layers)} linear layers quantized; default scheme {self.default.short_name()}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: how many layers get which scheme, and why the others stay float."""
        quantized: dict[str, int] = {}
        kept: dict[str, int] = {}
        for p in self.layers.values():
            table = quantized if p.quantized else kept
            key = p.scheme.short_name() if p.quantized else p.reason
            table[key] = table.get(key, 0) + 1
        parts = [f"{len(self.quantized())} of {len(self.layers)} linear layers quantized"]
        if quantized:
            parts.append(", ".join(f"{n} {s}" for s, n in quantized.items()))
        if kept:
            parts.append("float: " + "; ".join(f"{n} x {why}" for why, n in kept.items()))
        return " (".join(parts[:2]) + (")" if len(parts) > 1 else "") + ("; " + parts[2] if len(parts) > 2 else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            **({"extra": dict(self.extra)} if self.extra else {}),
            "layers": {n: {"shape": list(p.shape), "scheme": p.scheme.to_dict(), "reason": p.reason, "block": p.block}
                       for n, p in self.layers.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _pattern_kind(key: str) -> str:
    return "regex" if _REGEX_CHARS.search(key) else "substring"


def _ignore_match(pattern: str, name: str) -> bool:
    # "layers.1" must not match "layers.10": a trailing digit is followed by a dot.
    if pattern and pattern[-1].isdigit():
        return name == pattern or name.endswith(pattern) or (pattern + ".") in (name + ".")
    return pattern in name


def _as_list(value: "str | Iterable[str] | None") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def _resolve_config(layer_config: Mapping[str, Any] | None, default: QuantScheme) -> list[tuple[str, QuantScheme]]:
    out = []
    for key, value in (layer_config or {}).items():
        try:
            if isinstance(value, (int,)) and not isinstance(value, bool):
                scheme = default.replace(bits=value, data_type="int" if value < 16 else "float")
            else:
                scheme = resolve_scheme(value, base=default)
        except (ValueError, TypeError) as e:
            raise ValueError(f"layer_config[{key!r}]: {e}") from e
        out.append((key, scheme))
    return out


@dataclass
class _Rules:
    """The user's per-layer rules (layer_config, ignore_layers, quant_lm_head) and which of them matched."""

    configs: list[tuple[str, QuantScheme]]
    ignores: list[str]
    quant_lm_head: bool
    tied: bool
    has_experts: bool
    used_keys: set[str] = field(default_factory=set)
    used_ignores: set[str] = field(default_factory=set)

    def config_for(self, name: str) -> tuple[str, QuantScheme] | None:
        """An exact name wins, then the first plain substring key, then the first regex key."""
        exact = next(((k, s) for k, s in self.configs if k == name), None)
        sub = next(((k, s) for k, s in self.configs if _pattern_kind(k) == "substring" and k in name), None)
        rx = next(((k, s) for k, s in self.configs if _pattern_kind(k) == "regex" and re.search(k, name)), None)
        chosen = exact or sub or rx
        if chosen:
            self.used_keys.add(chosen[0])
        return chosen

    def ignore_for(self, name: str) -> str | None:
        hit = next((p for p in self.ignores if _ignore_match(p, name)), None)
        if hit is not None:
            self.used_ignores.add(hit)
        return hit

    def warn_unused(self) -> None:
        for key, _ in self.configs:
            if key not in self.used_keys:
                logger.warning("layer_config key %r matches no linear layer of the model", key)
        for pattern in self.ignores:
            if pattern not in self.used_ignores:
                logger.warning("ignore_layers entry %r matches no linear layer of the model", pattern)


def _layer_choice(rules: _Rules, arch: ArchFacts, default: QuantScheme, name: str, local: str, block: int | None
                  ) -> tuple[QuantScheme, str, tuple[str, QuantScheme] | None, str | None]:
    """(scheme, reason, the layer_config entry that matched, the ignore pattern that matched) of one Linear."""
    is_head = name == arch.lm_head
    scheme, reason = default, "default scheme"
    chosen = rules.config_for(name)
    if chosen:
        scheme, reason = chosen[1], f"layer_config[{chosen[0]!r}]"
    hit = rules.ignore_for(name)
    if hit is not None:
        scheme, reason = KEEP, f"ignore_layers {hit!r}"
    elif block is None and not is_head:
        if not chosen:
            scheme, reason = KEEP, "outside the decoder blocks"
    elif is_head:
        if rules.tied:
            if rules.quant_lm_head or chosen:
                logger.warning("lm_head stays float: it shares its weight with the input embeddings")
            scheme, reason = KEEP, "lm_head is tied to the input embeddings"
        elif not (rules.quant_lm_head or chosen):
            scheme, reason = KEEP, "lm_head (pass quant_lm_head to quantize it)"
        elif not chosen:
            reason = "quant_lm_head"
    elif rules.has_experts and any(local == r for r in arch.routers):
        scheme, reason = KEEP, "MoE router"
    return scheme, reason, chosen, hit


def build_plan(
    model: torch.nn.Module,
    arch: ArchFacts,
    default: QuantScheme,
    *,
    layer_config: Mapping[str, Any] | None = None,
    ignore_layers: "str | Iterable[str] | None" = None,
    quant_lm_head: bool = False,
    formats: Iterable[Format] = (),
    has_imatrix: bool = False,
) -> QuantPlan:
    """Resolve every Linear of ``model`` to a LayerPlan; raise ValueError for anything a format cannot hold.

    ``has_imatrix``: an importance matrix will be collected (it changes one llama.cpp mix rule).
    """
    formats = list(formats)
    gguf_fmt = next((f for f in formats if is_gguf(f)), None)
    gguf_types = None
    if gguf_fmt is not None:
        from .formats.gguf_tensors import hf_tensor_types

        gguf_types = hf_tensor_types(model, gguf_mix(gguf_fmt), has_imatrix)  # unknown architecture: raises here
    tied = tied_embeddings(model)
    rules = _Rules(_resolve_config(layer_config, default), _as_list(ignore_layers), quant_lm_head, tied,
                   any(n.endswith("experts") for n, _ in model.named_modules()))
    block_re = re.compile(rf"^{re.escape(arch.blocks)}\.(\d+)\.")

    layers: dict[str, LayerPlan] = {}
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        shape = linear_shape(module)
        m = block_re.match(name)
        block = int(m.group(1)) if m else None
        scheme, reason, chosen, hit = _layer_choice(rules, arch, default, name, name[m.end():] if m else name, block)
        if gguf_types is not None and hit is None:
            scheme, reason = _gguf_layer(name, shape, chosen, scheme, reason, name == arch.lm_head and tied, gguf_types)
        if scheme.data_type == "gguf":
            pass  # the mix's shape fallbacks already fit the type's block size
        elif scheme.is_quantized and (shape[0] % SHAPE_MULTIPLE or shape[1] % SHAPE_MULTIPLE):
            scheme, reason = KEEP, f"shape {shape[0]}x{shape[1]} is not a multiple of {SHAPE_MULTIPLE}"
        if not scheme.is_quantized and reason.startswith("layer_config"):
            reason += " keeps it float"
        layers[name] = LayerPlan(name, shape, scheme, reason, block, conv1d=not isinstance(module, torch.nn.Linear))
    rules.warn_unused()

    plan = QuantPlan(layers, default, arch.blocks, len(get_module(model, arch.blocks)), arch.lm_head, formats)
    if gguf_types is not None:
        linears = {f"{n}.weight" for n in layers}
        plan.extra = {g: str(c) for hf, (g, c) in gguf_types.items() if hf not in linears and not c.reason.startswith("not ")}
    _check_formats(plan, arch, formats)
    return plan


def _gguf_layer(name, shape, chosen, scheme, reason, tied_head, gguf_types) -> tuple[QuantScheme, str]:
    """A Linear's scheme under a GGUF mix: the mix's type and reason, unless layer_config names one."""
    from .quant.gguf import check_shape

    if chosen is not None:
        if scheme.data_type == "gguf":
            check_shape(shape, scheme.ggml_type, f"{name} (layer_config {chosen[0]!r})")
        return scheme, reason  # an int scheme is refused by the format check, naming the layer
    if tied_head:
        return KEEP, "lm_head is tied to the input embeddings (written once, as token_embd)"
    entry = gguf_types.get(f"{name}.weight")
    if entry is None:
        raise ValueError(f"{name}: the GGUF writer has no tensor for this layer")
    _, choice = entry
    if choice.qtype.name in ("F32", "F16", "BF16"):
        return KEEP, f"{choice.qtype.name}: {choice.reason}"
    return gguf_scheme(choice.qtype.name), choice.reason


def _fused_settings(s: QuantScheme) -> tuple:
    """What must agree inside a fused group: everything but where the scheme came from."""
    return (s.data_type, s.bits, s.group_size, s.group_rows, s.sym, s.act_bits,
            *((s.act_group, s.act_symmetric, s.act_dtype, s.act_dynamic) if s.quantizes_activations else ()))


def _check_formats(plan: QuantPlan, arch: ArchFacts, formats: list[Format]) -> None:
    for fmt in formats:
        for p in plan.quantized():
            problem = check_layer(fmt, p.scheme, p.name, p.shape, is_lm_head=p.name == plan.lm_head,
                                  in_blocks=p.block is not None)
            if problem:
                raise ValueError(problem + " (use format 'fake' for any scheme, or change the scheme)")
        problem = check_group_sizes(fmt, {p.name: p.scheme for p in plan.quantized()})
        if problem:
            raise ValueError(problem)
        if not FORMATS[fmt].fuses_qkv:
            continue
        for b in range(plan.n_blocks):
            for group in arch.fused_groups:
                names = [f"{plan.blocks_prefix}.{b}.{g}" for g in group]
                members = [plan.layers[n] for n in names if n in plan.layers]
                settings = {_fused_settings(m.scheme) for m in members}
                if len(settings) > 1:
                    detail = ", ".join(f"{m.name}={m.scheme.short_name() if m.quantized else 'float'}" for m in members)
                    raise ValueError(
                        f"format {fmt.value}: serving engines fuse {', '.join(group)} into one matrix, so they need "
                        f"the same scheme (data type, bits, group size, sym and input quantization); got {detail}. Give "
                        f"them the same layer_config, or use format 'fake'."
                    )
