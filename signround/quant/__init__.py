"""Pure numerics: tensors in, tensors out. No module state, no I/O."""
