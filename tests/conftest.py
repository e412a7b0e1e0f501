"""Fixtures shared by every test tier: tiny random models, the real SmolLM2 model, calibration rows."""

from __future__ import annotations

import pytest
import torch

from signround.testing import smollm2_hf_dir, tiny_model


@pytest.fixture
def tiny():
    """Factory: tiny("llama") -> a fresh random model of that architecture (hidden 128, 2 blocks)."""
    return tiny_model


@pytest.fixture
def calib_ids():
    """Random calibration rows for tiny models (vocab 512): (8, 32) int64, fixed seed."""
    return torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct as a float32 checkpoint (converted once per machine, then cached)."""
    return smollm2_hf_dir()
