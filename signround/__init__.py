"""signround: quantize LLM weights with SignRound, RTN and optimised RTN; export auto_round and more."""

from .api import AutoRound
from .autoscheme import AutoScheme
from .inference.load import load_quantized
from .schemes import PRESETS, QuantScheme, resolve_scheme

__all__ = ["AutoRound", "AutoScheme", "QuantScheme", "PRESETS", "resolve_scheme", "load_quantized", "__version__"]

__version__ = "0.1.0"
