"""Model loading, block discovery and per-architecture facts."""
