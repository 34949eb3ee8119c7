"""The one declaration of seer_kernels' ops: which backends each op has and which runs
first per device type. Backend resolution (`_backend`), `available_backends`, the
trainer config's allowed `swav.backend` values, `python -m seer_kernels.info`, the demo,
benchmarks/gpu_check.sh and the test and benchmark grids all read their op and backend
lists from here; tests/test_registry.py checks that every declared op has a reference,
fake kernels, a test file, a benchmark file and a registered kernel per declared backend.

Per op, by convention (what tests/test_registry.py checks):
  reference  `seer_kernels.reference.<op>`; public wrapper `seer_kernels.<op>`, defined
             in seer_kernels/ops/<op>.py, which registers the op through
             `seer_kernels._library.register`;
  cpu, cuda  the C++ ops `torch.ops.seer_kernels.<k>` for k in `kernels`, declared in
             csrc/ops.cpp, with a CPU or CUDA kernel and a fake kernel each;
  triton     the ops `torch.ops.seer_kernels.<k>_triton`, each with a fake kernel,
             defined from the launchers `seer_kernels.triton.<op>.<k>`;
  tests      tests/test_<op>.py, benchmark benchmarks/bench_<op>.py.

The module imports nothing, so the declaration reads on its own (importing it still runs
seer_kernels/__init__.py, which loads the ops).
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("reference", "cpu", "cuda", "triton")
# The fused backends that run CUDA tensors (tests and benchmarks parametrize GPU grids on them).
GPU_BACKENDS = ("cuda", "triton")
DEVICE_TYPES = ("cpu", "cuda")
# Fastest first, per device type, for an op that declares no order of its own (and for
# `resolve` called without an op).
DEVICE_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}


@dataclass(frozen=True)
class Op:
    name: str
    # The C++ schema ops behind the op (forward first), as csrc/ops.cpp declares them.
    kernels: tuple[str, ...]
    backends: tuple[str, ...] = BACKENDS
    # Per device type, fastest first, where this op's measurements disagree with DEVICE_ORDER
    # (or "reference" first where no machine has measured the op's fused backends yet).
    order: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def default_order(self, device_type: str) -> tuple[str, ...]:
        """The op's backends for `device_type`, fastest first."""
        order = dict(self.order).get(device_type) or DEVICE_ORDER.get(device_type, ("reference",))
        return tuple(b for b in order if b in self.backends)

    def gpu_backends(self) -> tuple[str, ...]:
        """The op's fused backends for CUDA tensors, whether or not this machine has them."""
        return tuple(b for b in GPU_BACKENDS if b in self.backends)


OPS = {
    op.name: op
    for op in (
        # sinkhorn on CUDA: the CUDA op first at every size. H200, 2026-11-28: it led the
        # Triton pipeline of then by ~15% at K = 3000 (the per-GPU shapes), which led at
        # K = 16384 (2.1x); that pipeline (8 kernels at T = 3) is replaced by one launch
        # per pass (seer_kernels/triton/sinkhorn.py), which no GPU has run yet, so it is
        # no default anywhere until benchmarks/sinkhorn_gpu.py has measured it (it prints
        # the order per size class its numbers imply).
        Op(
            "sinkhorn",
            kernels=("sinkhorn", "sinkhorn_colstats", "sinkhorn_codes"),
            order=(("cuda", ("cuda", "triton", "reference")),),
        ),
        # H200, 2026-11-28: prototype_scores' CUDA op (cuBLAS GEMMs) was 1.9-7.3x faster
        # than the Triton GEMMs at every shape and dtype, forward and backward.
        Op(
            "prototype_scores",
            kernels=("prototype_scores", "prototype_scores_backward"),
            order=(("cuda", ("cuda", "triton", "reference")),),
        ),
        Op("swav_cross_entropy", kernels=("swav_cross_entropy", "swav_cross_entropy_backward")),
        # The fused head: no CUDA C++ kernels. No GPU has run its Triton kernels yet (proven
        # under the interpreter and compiled for sm_90 only), so on CUDA tensors the plain
        # reference stays the default until a GPU measures "triton"; backend="triton"
        # forces them.
        Op(
            "prototype_cross_entropy",
            kernels=("prototype_cross_entropy", "prototype_cross_entropy_backward"),
            backends=("reference", "cpu", "triton"),
            order=(("cuda", ("reference", "triton")),),
        ),
    )
}


def op(name: str) -> Op:
    """The declaration of op `name`; a ValueError names the declared ops otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"op must be one of {tuple(OPS)}, got {name!r}") from None


def default_orders() -> dict[str, tuple[str, ...]]:
    """Fastest first: per device type ("cpu") and per op and device type ("sinkhorn:cpu")."""
    orders = dict(DEVICE_ORDER)
    for spec in OPS.values():
        for device_type in DEVICE_TYPES:
            orders[f"{spec.name}:{device_type}"] = spec.default_order(device_type)
    return orders


def op_test_files() -> list[str]:
    """The test file of every op, relative to the repository root."""
    return [f"tests/test_{name}.py" for name in OPS]
