import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and the shared CI machine is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
