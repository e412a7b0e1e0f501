"""Quantization algorithms run block by block: SignRound tuning, RTN and optimised RTN."""
