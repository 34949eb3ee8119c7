"""Test setup. Without a CUDA GPU the Triton kernels run under the Triton interpreter on
CPU tensors; TRITON_INTERPRET must be set before triton is first imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The trainer caps oneDNN below AMX for CPU bf16 runs (seer.train.cap_onednn_isa), which only
# takes effect before oneDNN's first kernel: in this long-lived process, that is now.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Small matrices on a shared 2-core machine: a second OpenMP thread only adds waiting.
    The evaluation tests use it (pytestmark = pytest.mark.usefixtures("one_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
