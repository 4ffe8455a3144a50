"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the suite's small models only get slower from thread contention on the
    2-core CI machine, and single-threaded kernels keep results reproducible across machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
