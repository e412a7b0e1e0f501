"""Loading saved checkpoints back: QuantLinear modules and backend selection."""
