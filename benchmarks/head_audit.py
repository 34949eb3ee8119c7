"""What the fused SwAV head step costs on a GPU, counted without one: GPU kernels,
allocations and host syncs of its Triton launchers on fake CUDA tensors, and
torch.compile(fullgraph=True) giving one graph.

A head step, as seer_kernels.swav.swav_prototype_loss runs it with backend="triton":
  scores    prototype scores of the A assignment crops (under no_grad)
  sinkhorn  codes of the A crops, one `sinkhorn` call on (A, B, K)
  loss      prototype_cross_entropy's forward (the loss and both gradients)
  backward  autograd's grad_loss (a ones fill) and the backward op scaling the gradients
The forward and backward ops are called as autograd calls them: autograd's engine needs
a real device for CUDA tensors, fake or not, so the audit calls the two schema ops
directly, and the fill autograd makes for `loss.backward()` is counted explicitly.

`fake_cuda()` pretends an sm_90 GPU (FakeTensorMode with device "cuda", 132 SMs, Triton's
target); `Recorder` sees every op dispatched, and runs the seer_kernels Triton ops'
launchers (on fake tensors the op would run its fake kernel) so that their launches are
seen too. Counting rules: a Triton launch is one GPU kernel; an ATen op on CUDA tensors
that is not a view, metadata or an uninitialized allocation is one kernel (cuBLAS may
launch more: a lower bound there); every tensor an op returns that is not a view or an
input written in place is an allocation; `.item()`, `bool()`, `nonzero` and
device-to-host copies are host syncs.

    python -m benchmarks.head_audit          # the table
    python -m benchmarks.head_audit --json   # for tests/test_head_audit.py

Run it without TRITON_INTERPRET (the interpreter would run the kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SMS = 132  # an H100/H200
A, TEMPERATURE, EPSILON = 2, 0.1, 0.05
# (V, B, D, K, T) per GPU: SwAV's batch of 64 and 256 at K = 3000, SEER's K = 16000 at
# T = 10, and K = 65536 (the scores of all crops would be 640 MiB there).
SHAPES = [(8, 64, 128, 3000, 3), (8, 256, 128, 3000, 3), (6, 32, 256, 16000, 10), (10, 256, 256, 65536, 3)]
COUNTED = SHAPES[:2]  # the kernel budget of the issue is stated at these two

_UNINITIALIZED = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
_METADATA = {"detach_", "detach", "alias", "lift_fresh", "set_", "resize_", "requires_grad_"}
_SYNCS = {"_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "masked_select", "unique"}


class _Properties:
    multi_processor_count = SMS
    L2_cache_size = 50 * 2**20
    name = "pretended sm_90 GPU"
    major, minor = 9, 0
    total_memory = 80 * 2**30


class _Driver:
    """Triton's active driver as far as tracing a launch needs one: an sm_90 target."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cuda", 0)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def fake_cuda(triton_on_cpu: bool = False):
    """FakeTensorMode with a pretended sm_90 CUDA device: backend resolution takes the
    Triton backend as usable on CUDA (torch.cuda.is_available() itself stays False, or
    torch would initialize a driver that is not there) and the launchers' SM count and
    Triton's target answer as on one. `triton_on_cpu`: the Triton backend also resolves
    for CPU-typed fake tensors, for traces with a backward pass (autograd's engine needs
    a real device for CUDA tensors, fake or not)."""
    types = ("cuda", "cpu") if triton_on_cpu else ("cuda",)
    import triton
    from torch._subclasses.fake_tensor import FakeTensorMode

    from seer_kernels import _backend

    usable = _backend._usable
    saved = usable, torch.cuda.get_device_properties
    _backend._usable = lambda name, device_type, op="": (
        (name == "triton" and device_type in types) or usable(name, device_type, op)
    )
    torch.cuda.get_device_properties = lambda *args, **kwargs: _Properties()
    triton.runtime.driver.set_active(_Driver())
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        _backend._usable, torch.cuda.get_device_properties = saved
        triton.runtime.driver._active = None


def _launchers() -> dict[str, object]:
    """The launcher behind each seer_kernels Triton op, from the op declaration."""
    from seer_kernels import _registry

    out = {}
    for name, spec in _registry.OPS.items():
        if "triton" in spec.backends:
            module = importlib.import_module(f"seer_kernels.triton.{name}")
            for kernel in spec.kernels:
                out[f"seer_kernels::{kernel}_triton"] = getattr(module, kernel)
    return out


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class Recorder(TorchDispatchMode):
    """Every op dispatched on fake CUDA tensors, by section of the step."""

    supports_higher_order_operators = True

    def __init__(self) -> None:
        super().__init__()
        self.launchers = _launchers()
        self.section = "setup"
        self.kernels: list[tuple[str, str]] = []  # (section, kernel)
        self.allocations: list[tuple[str, str, tuple[int, ...]]] = []  # (section, op, shape)
        self.syncs: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "triton_kernel_wrapper" in str(func):
            from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

            kernel = kernel_side_table.get_kernel(kwargs["kernel_idx"])
            self.kernels.append((self.section, f"triton:{getattr(kernel, 'fn', kernel).__name__}"))
            return func(*args, **kwargs)
        launcher = self.launchers.get(getattr(getattr(func, "_schema", None), "name", None))
        if launcher is not None:
            with self:  # what the op runs on a GPU, recorded
                return launcher(*args, **kwargs)
        out = func(*args, **kwargs)
        self._aten(func, args, kwargs, out)
        return out

    def _aten(self, func, args, kwargs, out) -> None:
        namespace, base = func._schema.name.split("::")
        if namespace == "prim":
            return
        inputs, outputs = _tensors(list(args)) + _tensors(list(kwargs.values())), _tensors(out)
        crossing = (
            bool(outputs and inputs) and outputs[0].device.type == "cpu" and inputs[0].device.type == "cuda"
        )
        if base in _SYNCS or crossing:
            self.syncs.append((self.section, str(func)))
            return
        on_cuda = any(t.device.type == "cuda" for t in inputs + outputs)
        if not on_cuda or func.is_view or base in _METADATA or not (outputs or func._schema.is_mutable):
            return
        if base not in _UNINITIALIZED:
            self.kernels.append((self.section, str(func)))
        if not any(r.alias_info is not None for r in func._schema.returns):
            self.allocations.extend((self.section, str(func), tuple(t.shape)) for t in outputs)


def head_step(rec: Recorder, z: torch.Tensor, w: torch.Tensor, iterations: int) -> None:
    """One SwAV head step, backend triton, as swav_prototype_loss and autograd run it."""
    import seer_kernels as sk

    v, b, d = z.shape
    ops = torch.ops.seer_kernels
    rec.section = "scores"
    with torch.no_grad():
        scores = sk.prototype_scores(z[:A].reshape(A * b, d), w, backend="triton").view(A, b, -1)
        rec.section = "sinkhorn"
        codes = sk.sinkhorn(scores, epsilon=EPSILON, iterations=iterations, backend="triton")
    rec.section = "loss"
    loss, grad_z, grad_w = ops.prototype_cross_entropy_triton(z, w, codes, TEMPERATURE, True)
    rec.section = "backward"
    grad_loss = torch.ones_like(loss)  # what loss.backward() makes
    ops.prototype_cross_entropy_backward_triton(grad_loss, grad_z, grad_w)


def audit(shape: tuple[int, int, int, int, int]) -> dict:
    v, b, d, k, t = shape
    with fake_cuda():
        z = torch.empty(v, b, d, device="cuda")
        w = torch.empty(k, d, device="cuda")
        with Recorder() as rec:
            head_step(rec, z, w, t)
    sections = ("scores", "sinkhorn", "loss", "backward")
    kernels = {s: [name for sec, name in rec.kernels if sec == s] for s in sections}
    return {
        "shape": list(shape),
        "kernels": {s: len(kernels[s]) for s in sections},
        "kernel_names": kernels,
        "head_kernels": sum(len(kernels[s]) for s in sections if s != "sinkhorn"),
        "total_kernels": sum(len(x) for x in kernels.values()),
        # (section, op, shape) of every allocation of V B K elements or more.
        "large_allocations": [a for a in rec.allocations if math.prod(a[2]) >= v * b * k],
        "largest_allocation": max(
            (list(a) for a in rec.allocations), key=lambda a: math.prod(a[2]), default=None
        ),
        "allocations": len(rec.allocations),
        "syncs": [name for _, name in rec.syncs],
        "vbk": v * b * k,
    }


def _head_loss(backend: str):
    from seer_kernels.swav import swav_prototype_loss

    def step(z, w):
        return swav_prototype_loss(
            z, w, A, temperature=TEMPERATURE, sinkhorn_iterations=3, sinkhorn_epsilon=EPSILON, backend=backend
        )

    return step


def compile_graphs(kind: str) -> dict:
    """torch.compile(fullgraph=True) of the head step (swav_prototype_loss; aot_eager: the
    graphs are traced, not built by Inductor): the number of graphs.
      cpu         real CPU tensors requiring grad, backend cpu; AOTAutograd traces the
                  backward, which then runs.
      cuda        fake CUDA tensors, backend triton (traced into the launchers' kernels);
                  inputs without grad: the forward graph.
      cuda_joint  the same with inputs requiring grad, so the backward is traced too, on
                  CPU-typed fake tensors the Triton backend takes (autograd's engine
                  needs a real device for CUDA tensors)."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    v, b, d, k = 8, 64, 128, 3000
    if kind == "cpu":
        z = torch.randn(v, b, d, requires_grad=True)
        w = torch.randn(k, d, requires_grad=True)
        loss = torch.compile(_head_loss("cpu"), backend=counter, fullgraph=True)(z, w)
        loss.backward()
        ran = bool(torch.isfinite(loss)) and z.grad is not None and w.grad is not None
        return {"graphs": counter.frame_count, "ops": counter.op_count, "backward_ran": ran}
    joint = kind == "cuda_joint"
    with fake_cuda(triton_on_cpu=joint):
        device = "cpu" if joint else "cuda"
        z = torch.empty(v, b, d, device=device, requires_grad=joint)
        w = torch.empty(k, d, device=device, requires_grad=joint)
        torch.compile(_head_loss("triton"), backend=counter, fullgraph=True)(z, w)
    return {"graphs": counter.frame_count, "ops": counter.op_count}


def report() -> dict:
    return {
        "steps": [audit(shape) for shape in SHAPES],
        "compile": {kind: compile_graphs(kind) for kind in ("cpu", "cuda", "cuda_joint")},
    }


def _table(data: dict) -> str:
    lines = [
        "| (V, B, D, K, T) | scores | sinkhorn | loss | backward | head (no Sinkhorn) | total | largest allocation (where) | V B K | host syncs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["steps"]:
        k = row["kernels"]
        lines.append(
            f"| {tuple(row['shape'])} | {k['scores']} | {k['sinkhorn']} | {k['loss']} | {k['backward']} | "
            f"{row['head_kernels']} | {row['total_kernels']} | {row['largest_allocation'][2]} "
            f"({row['largest_allocation'][0]}) | {row['vbk']} | {len(row['syncs'])} |"
        )
    for device, graphs in data["compile"].items():
        lines.append(f"\ntorch.compile(fullgraph=True) of the head step, {device}: {graphs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(
            "benchmarks.head_audit: unset TRITON_INTERPRET (the interpreter would run the kernels)",
            file=sys.stderr,
        )
        return 2
    data = report()
    print(json.dumps(data, indent=1) if args.json else _table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
