"""Evaluation: perplexity and KL divergence against the float model."""
