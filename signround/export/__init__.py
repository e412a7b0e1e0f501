"""Exporters: pure writers from QuantizedWeights plus the plan to the files of one format."""
