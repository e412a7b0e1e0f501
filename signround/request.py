"""What the user asked for, checked before the model loads: options, scheme, formats and output directories.

``QuantRequest.build`` runs every check that needs no model (option types and ranges, scheme, recipe,
device, tune dtype, dataset spec); ``output_dirs``/``check_outputs`` name and check the directories a run
will write, so a bad ``--output_dir`` fails before hours of work. ``AutoRound`` holds one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import RunConfig, resolve_run
from .errors import BadInputError
from .formats import Format, gguf_mix, is_gguf, parse_formats
from .export.registry import export_dir_name
from .options import UserOptions
from .schemes import KEEP, PRESETS, QuantScheme, gguf_preset_mix, resolve_scheme

__all__ = ["QuantRequest"]

logger = logging.getLogger(__name__)

_SCHEME_OVERRIDES = ("bits", "group_size", "sym", "data_type", "act_bits", "act_group_size", "act_sym", "act_dynamic",
                     "act_data_type")


@dataclass(frozen=True)
class QuantRequest:
    options: UserOptions
    scheme: QuantScheme
    scheme_given: bool
    gguf_mix: str | None  # a GGUF:<MIX> preset's llama.cpp mix
    run: RunConfig  # resolved for the default formats; re-resolved once the formats are known
    auto_scheme: Any = None  # an AutoScheme (signround.autoscheme): the plan is chosen per layer among its options

    @classmethod
    def build(cls, scheme: "str | QuantScheme | Mapping[str, Any] | Any | None", options: Mapping[str, Any]) -> "QuantRequest":
        from .autoscheme.config import auto_scheme_from

        opts = UserOptions.from_kwargs(options)
        auto = auto_scheme_from(scheme, opts)
        if auto is not None:
            scheme = auto.options[0]  # the default scheme (names the output); every candidate layer gets a choice
        overrides = {k: opts.get(k) for k in _SCHEME_OVERRIDES}
        resolved = resolve_scheme("W4A16" if scheme is None else scheme, **overrides)
        mix = gguf_preset_mix(scheme)
        default_formats = parse_formats(f"gguf:{mix}") if mix else []
        request = cls(opts, resolved, scheme is not None, mix, resolve_run(opts, default_formats), auto)
        from .tune.act_inputs import check_static_needs_data

        check_static_needs_data({"default scheme": resolved}, request.run.method)  # before the model loads
        from .calib import check_dataset

        check_dataset(request.run.dataset)  # a spec that does not parse, or a missing file
        return request

    def default_formats(self) -> list[Format]:
        return parse_formats(f"gguf:{self.gguf_mix}") if self.gguf_mix else []

    def formats(self, formats: "str | Iterable[str] | None" = None) -> list[Format]:
        """The requested formats; None means the scheme's own (``gguf:<mix>`` for a GGUF preset, else auto_round)."""
        if formats:
            return parse_formats(formats)
        return self.default_formats() or [Format.AUTO_ROUND]

    def scheme_for(self, fmts: list[Format]) -> QuantScheme:
        """The default scheme for these formats: a GGUF format sets the GGUF scheme of its mix."""
        gguf_fmt = next((f for f in fmts if is_gguf(f)), None)
        if gguf_fmt is None:
            if self.scheme.data_type == "gguf":
                want = f"gguf:{self.gguf_mix}" if self.gguf_mix else "a gguf:<mix> format"
                raise BadInputError(f"a GGUF scheme ({self.scheme.short_name()}) can only be exported as GGUF ({want}); "
                                    f"got format {', '.join(f.value for f in fmts)}")
            return self.scheme
        mix = gguf_mix(gguf_fmt)
        if self.gguf_mix and self.gguf_mix != mix:
            raise BadInputError(f"scheme GGUF:{self.gguf_mix.upper()} and format {gguf_fmt.value} name different mixes; "
                                f"use --scheme GGUF:{mix.upper()} or --format gguf:{self.gguf_mix}")
        if self.scheme_given and self.scheme.data_type != "gguf":
            logger.warning("format %s decides each tensor's GGUF type: scheme %s is ignored", gguf_fmt.value,
                           self.scheme.short_name())
        given = {k: v for k in _SCHEME_OVERRIDES if (v := self.options.given.get(k)) is not None}
        if given and self.scheme.data_type != "gguf":  # (a GGUF preset warned when it was resolved)
            logger.warning("format %s fixes bits, group size and symmetry per GGUF type: the override(s) %s are "
                           "ignored", gguf_fmt.value, ", ".join(f"{k}={v}" for k, v in given.items()))
        return PRESETS.get(f"GGUF:{mix.upper()}", KEEP)  # float mixes (gguf:f16) quantize nothing

    def output_dirs(self, model_name: str, output_dir: "str | Path",
                    formats: "str | Iterable[str] | None" = None) -> list[Path]:
        """Where each format will be written: a child of ``output_dir`` per format."""
        fmts = self.formats(formats)
        scheme = self.scheme_for(fmts)
        return [Path(output_dir) / export_dir_name(model_name, scheme, f) for f in fmts]

    @staticmethod
    def check_outputs(targets: Iterable[Path], overwrite: bool) -> None:
        """Each target is writable and replaces nothing signround did not create (``export.io``)."""
        from .export.io import check_output_target

        for target in targets:
            check_output_target(target, overwrite)
