"""Test configuration.

TRITON_INTERPRET must be set before triton is first imported (torch.compile imports it too),
so the Triton kernels run on CPU tensors under the interpreter in every test. Compile checks
that need a real (non-interpreted) triton run in a subprocess with it removed.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTNBENCH_TEST_BACKENDS", "1")  # mha lists the fault-injection backend (variants/backends/fault.py)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def cpu():
    return torch.device("cpu")
