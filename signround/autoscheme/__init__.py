"""AutoScheme: the least-loss mixed-precision plan under an average-bit budget (AutoRound reference §8)."""

from .config import AutoScheme

__all__ = ["AutoScheme"]
