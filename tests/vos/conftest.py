"""One intra-op thread for the VOS tests: their tensors are tiny, and on a busy 2-core machine
OpenMP threads waiting for each other made a 3 ms step take 60 ms."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
