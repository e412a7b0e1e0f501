"""A tiny model whose weights are scaled up (x6) and rows sampled from it, so that KL and 2-bit damage mean something."""

from __future__ import annotations

import torch


def peaked_tiny(tiny, seed: int, rows: int = 8, length: int = 32):
    """(model, ids): the tiny Llama of ``seed`` with every matrix x6, and ``rows`` x ``length`` ids it generated."""
    model = tiny("llama", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (rows, 1), generator=g)
    with torch.no_grad():
        for _ in range(length - 1):
            probs = model(input_ids=ids).logits[:, -1].float().softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
    return model, ids
