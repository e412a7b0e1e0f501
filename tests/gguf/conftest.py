"""GGUF tests run torch on one thread: the searches issue many small ops, and on a shared 2-core
machine OpenMP's second thread turns each into a wait (measured: 40x slower). Module scope, so that
class- and module-scoped fixtures (which build files) run on one thread too."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
