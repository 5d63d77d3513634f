"""One intra-op thread for these tests: their tensors are tiny, and on a shared 2-core machine a
second thread mostly waits on the first (a training step ran 3-5x slower with two)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
