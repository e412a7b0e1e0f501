"""``AutoScheme``: what the user asks of a mixed-precision plan, checked on construction (no model needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import BadInputError
from ..schemes import QuantScheme, resolve_scheme

__all__ = ["AutoScheme", "resolve_options", "parse_shared_layers", "auto_scheme_from"]


def _names(value: "str | Sequence[Any]") -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def resolve_options(options: "str | Sequence[str | QuantScheme]") -> dict[str, QuantScheme]:
    """Option name -> resolved scheme, in the order given, equal schemes once (GGUF:Q4_K_S == GGUF:Q4_K_M: the
    first name is kept). A ``GGUF:<MIX>`` option is its mix's default type for every Linear."""
    out: dict[str, QuantScheme] = {}
    for opt in _names(options):
        name = opt.short_name() if isinstance(opt, QuantScheme) else str(opt).strip()
        if "MIXED" in name.upper():
            raise BadInputError(f"AutoScheme option {name!r} is a mixed preset; options must be uniform schemes "
                                f"(AutoScheme makes the mix)")
        try:
            scheme = opt if isinstance(opt, QuantScheme) else resolve_scheme(name)
        except (ValueError, TypeError) as e:
            raise BadInputError(f"AutoScheme option {name!r}: {e}") from e
        if scheme.quantizes_activations and not scheme.act_dynamic:
            raise BadInputError(f"AutoScheme option {name!r} has static activation scales, which need a calibrated "
                                f"maximum per layer; choose a dynamic scheme")
        if scheme not in out.values():
            out[name] = scheme
    if not out:
        raise BadInputError("AutoScheme needs at least one option (e.g. options=('W2A16G64', 'W4A16'))")
    return out


def parse_shared_layers(value: "str | Sequence[Any] | None") -> tuple[tuple[str, ...], ...]:
    """Groups of layer names/regexes (matched inside each block) that must share one option.

    A string separates groups by ``;`` and names by ``,`` (``"q_proj,k_proj;gate_proj,up_proj"``); a flat
    sequence of strings is one group; a sequence of sequences is several."""
    if value is None:
        return ()
    if isinstance(value, str):
        groups = [tuple(n.strip() for n in g.split(",") if n.strip()) for g in value.split(";")]
    elif all(isinstance(v, str) for v in value):
        groups = [tuple(value)]
    else:
        groups = [tuple(_names(g)) for g in value]
    groups = [g for g in groups if g]
    for g in groups:
        if not all(isinstance(n, str) and n for n in g):
            raise BadInputError(f"shared_layers: each group is a list of layer names or regexes, got {g!r}")
    return tuple(groups)


@dataclass(frozen=True)
class AutoScheme:
    """Choose each layer's scheme among ``options`` for the least loss at ``avg_bits`` bits per weight on average.

    Passed as ``AutoRound(model, scheme=AutoScheme(...))``; the plan it picks becomes a ``layer_config`` and
    the chosen method (RTN, optimised RTN, SignRound) runs on it. ``nsamples``/``seqlen`` size the one
    sensitivity pass (default: the run's calibration size). ``rounds`` > 1 re-linearizes: each further
    round runs the sensitivity pass again with the previous round's choice quantized in place (RTN) and
    solves again, so the scores see what the 2-bit layers do to the layers after them (one pass per round).
    """

    avg_bits: float
    options: tuple = ("W2A16G64", "W4A16", "W8A16")
    shared_layers: Any = None
    ignore_scale_zp_bits: bool = False
    nsamples: int | None = None
    seqlen: int | None = None
    rounds: int = 1  # 2 re-linearizes once more: lower held-out KL with RTN weights on SmolLM2, twice the pass time (RESULTS.md)

    def __post_init__(self) -> None:
        if isinstance(self.avg_bits, bool) or not isinstance(self.avg_bits, (int, float)) \
                or not math.isfinite(self.avg_bits) or self.avg_bits <= 0:
            raise BadInputError(f"AutoScheme avg_bits must be a positive number, got {self.avg_bits!r}")
        opts = tuple(_names(self.options)) if isinstance(self.options, (str, list, tuple)) else None
        if opts is None:
            raise BadInputError(f"AutoScheme options must be a list of preset names, got {type(self.options).__name__}")
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "shared_layers", parse_shared_layers(self.shared_layers))
        for name in ("nsamples", "seqlen"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "nsamples" else 2)):
                raise BadInputError(f"AutoScheme {name} must be an integer >= {1 if name == 'nsamples' else 2}, got {v!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise BadInputError(f"AutoScheme rounds must be an integer >= 1, got {self.rounds!r}")
        resolve_options(self.options)  # unknown or mixed presets fail here

    @property
    def schemes(self) -> dict[str, QuantScheme]:
        return resolve_options(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"avg_bits": self.avg_bits, "options": list(self.schemes), "shared_layers": [list(g) for g in self.shared_layers],
                "ignore_scale_zp_bits": self.ignore_scale_zp_bits, "rounds": self.rounds}


_CLI_FIELDS = ("avg_bits", "options", "shared_layers", "ignore_scale_zp_bits", "autoscheme_rounds")


def auto_scheme_from(scheme: Any, opts: Any) -> "AutoScheme | None":
    """The run's AutoScheme: ``scheme`` itself, or one made of the options ``avg_bits``/``options``/... (the CLI's);
    None when neither asks for one. ``avg_bits`` and ``options`` go together (checked before the model loads)."""
    given = {k: opts.get(k) for k in _CLI_FIELDS if opts.is_given(k)}
    if "autoscheme_rounds" in given:
        given["rounds"] = given.pop("autoscheme_rounds")
    if isinstance(scheme, AutoScheme):
        if given:
            raise BadInputError(f"scheme is an AutoScheme: pass {', '.join(given)} to it, not as separate options")
        return scheme
    if not given:
        return None
    if "avg_bits" not in given or "options" not in given:
        missing = "options" if "avg_bits" in given else "avg_bits"
        raise BadInputError(f"AutoScheme needs both avg_bits and options: {missing} is missing "
                            f"(e.g. --avg_bits 3 --options W2A16G64,W4A16)")
    if scheme is not None:
        raise BadInputError(f"scheme {scheme!r} and AutoScheme options ({', '.join(given)}) both choose the scheme; "
                            f"give one of them")
    return AutoScheme(**given)
