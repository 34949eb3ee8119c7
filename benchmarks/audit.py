"""What a call costs on a GPU, counted without one: GPU kernels, allocations, fills and
host syncs of the Triton launchers, run on fake CUDA tensors.

At SwAV's sizes (a few MB of scores per GPU) a step's time is launches, host work and
serial steps, not bytes; this counts the first and the last directly. `fake_cuda()`
makes a CUDA device that is not there (FakeTensorMode with device "cuda", the SM count
and L2 size pretended, backend resolution and Triton's target answered as for an sm_90
GPU); `Recorder` sees every op the call dispatches, Triton launches included:

    with fake_cuda():
        scores = torch.empty(256, 3000, device="cuda")
        with Recorder() as rec:
            sk.sinkhorn(scores, backend="triton")
    rec.counts()   # {"kernels": 4, "allocations": 2, "fills": 0, "syncs": 0, ...}

Counting rules: a Triton launch is one kernel; an ATen op on CUDA tensors that is not a
view and not an uninitialized allocation (empty*) is one kernel (cuBLAS or a reduction
may launch more: a lower bound there); every tensor an op returns that is not a view of
an input and not the input written in place is an allocation; zeros/ones/full and fill_
/zero_ are fills; `.item()`, `bool()`, nonzero and device-to-host copies are host syncs.

    python -m benchmarks.audit            # the table of every op and shape audited in CI
    python -m benchmarks.audit --json     # the same, as JSON (tests/test_launch_audit.py)

Run it without TRITON_INTERPRET (the interpreter would run the kernels); the tests run it
in a subprocess for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from seer_kernels._interpreter import triton_interpreted

# An H100/H200-like device: 132 SMs, 50 MiB of L2, sm_90.
SMS = 132
L2_BYTES = 50 * 2**20

_FACTORIES_UNINITIALIZED = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
_FILLS = {"zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full",
          "fill_", "zero_", "fill"}  # fmt: skip
_METADATA = {"detach_", "detach", "alias", "lift_fresh", "set_", "resize_", "requires_grad_"}
_SYNCS = {"_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "masked_select", "unique", "_unique",
          "_unique2", "unique_consecutive", "unique_dim"}  # fmt: skip


class _FakeProperties:
    def __init__(self, sms: int, l2_bytes: int) -> None:
        self.multi_processor_count = sms
        self.L2_cache_size = l2_bytes
        self.name = "fake sm_90 device"
        self.major, self.minor = 9, 0
        self.total_memory = 80 * 2**30


class _FakeDriver:
    """Triton's active driver, as far as tracing and compiling need one: an sm_90 target."""

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
def fake_driver():
    """Triton's active driver answers for an sm_90 GPU (compiling works without a GPU)."""
    import triton

    triton.runtime.driver.set_active(_FakeDriver())
    try:
        yield
    finally:
        triton.runtime.driver._active = None


@contextlib.contextmanager
def fake_cuda(sms: int = SMS, l2_bytes: int = L2_BYTES, *, cpu_typed: bool = False):
    """FakeTensorMode with a pretended sm_90 CUDA device; yields the device to create
    tensors on. `cpu_typed`: the tensors are CPU-typed fakes that the Triton backend and
    its launchers treat as on that GPU, for calls with a backward pass (the autograd
    engine needs a real device for CUDA tensors, fake or not)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from seer_kernels import _backend
    from seer_kernels.triton import _common

    props = _FakeProperties(sms, l2_bytes)
    saved = torch.cuda.get_device_properties, _backend._cuda_available, _backend._triton_on_cpu
    torch.cuda.get_device_properties = lambda *a, **k: props
    _backend._cuda_available = lambda: True
    if cpu_typed:
        _backend._triton_on_cpu = lambda: True
        _common.AUDITED_GPU = props
    try:
        with fake_driver(), FakeTensorMode(allow_non_fake_inputs=True):
            yield torch.device("cpu" if cpu_typed else "cuda")
    finally:
        torch.cuda.get_device_properties, _backend._cuda_available, _backend._triton_on_cpu = saved
        _common.AUDITED_GPU = None


@dataclass
class Launch:
    """One Triton launch: the kernel, its grid and its constant (compile-time) arguments."""

    kernel: str
    grid: tuple
    args: dict  # every argument by name: tensors (fake), numbers and constexprs
    num_warps: int
    num_stages: int


def _triton_op_launcher(func):
    """The launcher behind one of seer_kernels' Triton ops (None for other ops)."""
    from seer_kernels import _library

    schema = getattr(func, "_schema", None)
    return _library.TRITON_LAUNCHERS.get(schema.name) if schema is not None else None


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class Recorder(TorchDispatchMode):
    """Records every op a call dispatches on (fake) CUDA tensors, each record tagged with
    the `section` of the call it happened in (set it between the parts of a step)."""

    supports_higher_order_operators = True

    def __init__(self, cpu_typed: bool = False) -> None:
        super().__init__()
        self.cpu_typed = cpu_typed
        self.section = "call"
        self.kernels: list[tuple[str, str]] = []  # (section, kernel)
        self.launches: list[Launch] = []
        self.allocations: list[tuple[str, str, tuple[int, ...], int]] = []  # (section, op, shape, bytes)
        self.fills: list[tuple[str, str]] = []
        self.syncs: list[tuple[str, str]] = []
        self.ops: list[str] = []  # the Triton ops called, whose launches are recorded

    def kernel_names(self, section: str | None = None) -> list[str]:
        return [name for sec, name in self.kernels if section is None or sec == section]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "triton_kernel_wrapper" in str(func):
            self._triton(kwargs)
            return func(*args, **kwargs)
        launcher = _triton_op_launcher(func)
        if launcher is not None:
            # A Triton op runs its fake kernel on fake tensors: run its launcher instead,
            # recorded, as it runs on a GPU.
            self.ops.append(str(func))
            with self:
                return launcher(*args, **kwargs)
        out = func(*args, **kwargs)
        self._aten(func, args, kwargs, out)
        return out

    def _triton(self, kwargs: dict) -> None:
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

        kernel = kernel_side_table.get_kernel(kwargs["kernel_idx"])
        fn = getattr(kernel, "fn", kernel)
        args = {
            **kwargs.get("kwargs", {}),
            **kernel_side_table.get_constant_args(kwargs["constant_args_idx"]),
        }
        args = {k: getattr(v, "value", v) for k, v in args.items()}  # constexpr[3] -> 3
        # torch.library.wrap_triton turns launch options into the config of a one-config
        # autotuner.
        configs = getattr(kernel, "configs", None)
        warps = configs[0].num_warps if configs else args.pop("num_warps", 4)
        stages = configs[0].num_stages if configs else args.pop("num_stages", 3)
        grid = tuple(tuple(int(x) for x in g) for g in kwargs["grid"])
        self.kernels.append((self.section, f"triton:{fn.__name__}"))
        self.launches.append(Launch(fn.__name__, grid, args, warps, stages))

    def _aten(self, func, args, kwargs, out) -> None:
        namespace, base = func._schema.name.split("::")
        if namespace == "prim":  # metadata queries (prim::device), no kernel
            return
        inputs = _tensors(list(args)) + _tensors(list(kwargs.values()))
        outputs = _tensors(out)
        on_cuda = self.cpu_typed or any(t.device.type == "cuda" for t in inputs + outputs)
        crossing = outputs and inputs and outputs[0].device.type == "cpu" and inputs[0].device.type == "cuda"
        if base in _SYNCS or crossing:
            self.syncs.append((self.section, str(func)))
            return
        # Views, metadata-only ops (detach_ changes autograd state) and ops that return no
        # tensor (promote_types) launch nothing.
        if not on_cuda or func.is_view or base in _METADATA or not (outputs or func._schema.is_mutable):
            return
        if base in _FILLS:
            self.fills.append((self.section, str(func)))
        if base not in _FACTORIES_UNINITIALIZED:
            self.kernels.append((self.section, str(func)))
        if any(r.alias_info is not None for r in func._schema.returns):
            return  # in place or out=: writes a tensor that exists
        for t in outputs:
            self.allocations.append((self.section, str(func), tuple(t.shape), t.numel() * t.element_size()))

    def counts(self) -> dict:
        return {
            "kernels": len(self.kernels),
            "triton_launches": len(self.launches),
            "allocations": len(self.allocations),
            "largest_allocation_bytes": max((a[3] for a in self.allocations), default=0),
            "fills": len(self.fills),
            "syncs": len(self.syncs),
        }


def audit(fn, *shapes: tuple[int, ...], dtype=torch.float32, backward: bool = False, warmup: bool = True):
    """Run `fn(*tensors)` on fake CUDA tensors of `shapes` (requiring grad and followed by
    a backward pass of its scalar result when `backward`) and return the Recorder of the
    last call (`warmup`: a first call sets up what later calls reuse)."""
    with fake_cuda(cpu_typed=backward) as device:
        tensors = [torch.empty(shape, dtype=dtype, device=device, requires_grad=backward) for shape in shapes]
        for _ in range(2 if warmup else 1):
            with Recorder(cpu_typed=backward) as rec:
                out = fn(*tensors)
                if backward:
                    out.backward()
    return rec


def compile_graphs(fn, *shapes: tuple[int, ...], dtype=torch.float32, backward: bool = False) -> dict:
    """torch.compile(fn, fullgraph=True) on fake CUDA tensors of `shapes` (aot_eager: the
    graphs are traced, not run through Inductor): the number of graphs (1 = no break) and
    of ops in them. `backward`: the inputs require grad and fn's (scalar) result is
    differentiated, which traces the backward graph too."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    with fake_cuda(cpu_typed=backward) as device:
        tensors = [torch.empty(shape, dtype=dtype, device=device, requires_grad=backward) for shape in shapes]
        out = torch.compile(fn, backend=counter, fullgraph=True)(*tensors)
        if backward:
            out.backward()
    return {"graphs": counter.frame_count, "ops": counter.op_count}


# ------------------------------------------------------------------ what CI audits

# (B, K, T) per GPU as SwAV and SEER run them (issue grid of the GPU Sinkhorn): SwAV's
# batch of 64 and 256, 3904 = 256 + a 3840-row queue, SEER's T = 10 at K = 16000, and a
# 16384 x 16384 matrix that does not fit on chip; then two crops of 256 in one call.
SINKHORN_SHAPES = [((64, 3000), 3), ((256, 3000), 3), ((3904, 3000), 3), ((32, 16000), 10),
                   ((16384, 16384), 3), ((2, 256, 3000), 3)]  # fmt: skip


def _sinkhorn_case(path: str, iterations: int):
    import seer_kernels as sk
    from seer_kernels.triton import sinkhorn as launchers

    if path == "passes":
        return lambda s: sk.sinkhorn(s, epsilon=0.05, iterations=iterations, backend="triton")
    # One program per SM stands in for the occupancy a GPU's compiled kernel gives.
    return lambda s: launchers.onchip_pipeline(s, 0.05, iterations, programs=SMS)


def sinkhorn_audit(path: str, shape: tuple[int, ...], iterations: int) -> dict:
    """Counts of the second call (the first may set up what every later call reuses: the
    one-launch path's barrier word)."""
    rec = audit(_sinkhorn_case(path, iterations), shape)
    return {**rec.counts(), "launches": [f"{launch.kernel}{launch.grid[0]}" for launch in rec.launches]}


def composed_head(v: int, b: int, k: int, iterations: int, a: int = 2):
    """A SwAV head step on the fused ops (backend triton): scores of every crop, codes of
    the first `a` crops in one Sinkhorn call, the loss; returns fn(embeddings, prototypes)."""
    import seer_kernels as sk

    def step(embeddings, prototypes):
        scores = sk.prototype_scores(embeddings, prototypes, backend="triton").view(v, b, k)
        codes = sk.sinkhorn(scores[:a], epsilon=0.05, iterations=iterations, backend="triton")
        return sk.swav_cross_entropy(scores, codes, 0.1, backend="triton")

    return step


# ------------------------------------------------------- the fused SwAV head (issue grid)

HEAD_A, HEAD_TEMPERATURE, HEAD_EPSILON = 2, 0.1, 0.05
# (V, B, D, K, T) per GPU: SwAV's batch of 64 and 256 at K = 3000, SEER's K = 16000 at
# T = 10, and K = 65536 (the scores of all crops would be 640 MiB there).
HEAD_SHAPES = [
    (8, 64, 128, 3000, 3),
    (8, 256, 128, 3000, 3),
    (6, 32, 256, 16000, 10),
    (10, 256, 256, 65536, 3),
]
HEAD_SECTIONS = ("scores", "sinkhorn", "loss", "backward")


def head_step(rec: Recorder, z: torch.Tensor, w: torch.Tensor, iterations: int) -> None:
    """One fused SwAV head step, backend triton, as seer_kernels.swav.swav_prototype_loss
    and autograd run it: the A assignment crops' scores under no_grad, one Sinkhorn call
    for their codes, prototype_cross_entropy's forward (the loss and both gradients), and
    its backward (autograd's grad_loss, a ones fill, and one scaling launch). The two
    schema ops are called as autograd calls them: the engine needs a real device for CUDA
    tensors, fake or not."""
    import seer_kernels as sk

    v, b, d = z.shape
    ops = torch.ops.seer_kernels
    rec.section = "scores"
    with torch.no_grad():
        scores = sk.prototype_scores(z[:HEAD_A].reshape(HEAD_A * b, d), w, backend="triton").view(
            HEAD_A, b, -1
        )
        rec.section = "sinkhorn"
        codes = sk.sinkhorn(scores, epsilon=HEAD_EPSILON, iterations=iterations, backend="triton")
    rec.section = "loss"
    loss, grad_z, grad_w = ops.prototype_cross_entropy_triton(z, w, codes, HEAD_TEMPERATURE, True)
    rec.section = "backward"
    grad_loss = torch.ones_like(loss)  # what loss.backward() makes
    ops.prototype_cross_entropy_backward_triton(grad_loss, grad_z, grad_w)


def head_audit(shape: tuple[int, int, int, int, int]) -> dict:
    v, b, d, k, t = shape
    with fake_cuda():
        z = torch.empty(v, b, d, device="cuda")
        w = torch.empty(k, d, device="cuda")
        with Recorder() as rec:
            head_step(rec, z, w, t)
    kernels = {s: rec.kernel_names(s) for s in HEAD_SECTIONS}
    largest = max(rec.allocations, key=lambda a: math.prod(a[2]), default=None)
    return {
        "shape": list(shape),
        "kernels": {s: len(kernels[s]) for s in HEAD_SECTIONS},
        "kernel_names": kernels,
        "head_kernels": sum(len(kernels[s]) for s in HEAD_SECTIONS if s != "sinkhorn"),
        "total_kernels": sum(len(x) for x in kernels.values()),
        # (section, op, shape) of every allocation of V B K elements or more.
        "large_allocations": [list(a[:3]) for a in rec.allocations if math.prod(a[2]) >= v * b * k],
        "largest_allocation": None if largest is None else list(largest[:3]),
        "allocations": len(rec.allocations),
        "syncs": [name for _, name in rec.syncs],
        "vbk": v * b * k,
    }


def _fused_head_loss(backend: str):
    from seer_kernels.swav import swav_prototype_loss

    def step(z, w):
        return swav_prototype_loss(
            z, w, HEAD_A, temperature=HEAD_TEMPERATURE, sinkhorn_iterations=3, sinkhorn_epsilon=HEAD_EPSILON,
            backend=backend,
        )  # fmt: skip

    return step


def fused_head_graphs() -> dict:
    """torch.compile(fullgraph=True) of the fused head step (swav_prototype_loss):
    cpu         real CPU tensors requiring grad, backend cpu; the backward runs too.
    cuda        fake CUDA tensors, backend triton, the forward.
    cuda_joint  forward and backward traced, backend triton (CPU-typed fakes)."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    v, b, d, k = 8, 64, 128, 3000
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    z = torch.randn(v, b, d, requires_grad=True)
    w = torch.randn(k, d, requires_grad=True)
    loss = torch.compile(_fused_head_loss("cpu"), backend=counter, fullgraph=True)(z, w)
    loss.backward()
    ran = bool(torch.isfinite(loss)) and z.grad is not None and w.grad is not None
    return {
        "cpu": {"graphs": counter.frame_count, "ops": counter.op_count, "backward_ran": ran},
        "cuda": compile_graphs(_fused_head_loss("triton"), (v, b, d), (k, d)),
        "cuda_joint": compile_graphs(_fused_head_loss("triton"), (v, b, d), (k, d), backward=True),
    }


def report() -> dict:
    out = {"sinkhorn": [], "compile": {}}
    for path in ("passes", "onchip"):
        for shape, t in SINKHORN_SHAPES:
            out["sinkhorn"].append(
                {"path": path, "shape": list(shape), "T": t, **sinkhorn_audit(path, shape, t)}
            )
    out["compile"]["sinkhorn"] = compile_graphs(_sinkhorn_case("passes", 3), (256, 3000))
    v, b, d, k = 8, 64, 128, 3000
    out["compile"]["composed_head"] = compile_graphs(
        composed_head(v, b, k, 3), (v * b, d), (k, d), backward=True
    )
    head = audit(composed_head(v, b, k, 3), (v * b, d), (k, d), backward=True)
    out["composed_head"] = {
        "shape": [v, b, d, k],
        "T": 3,
        **head.counts(),
        "kernel_names": head.kernel_names(),
    }
    out["fused_head"] = [head_audit(shape) for shape in HEAD_SHAPES]
    out["compile"]["fused_head"] = fused_head_graphs()
    return out


def _table(data: dict) -> str:
    lines = [
        "| path | shape | T | GPU kernels | Triton launches | allocations | largest MiB | fills | host syncs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["sinkhorn"]:
        shape = "x".join(str(n) for n in row["shape"])
        lines.append(
            f"| {row['path']} | {shape} | {row['T']} | {row['kernels']} | {row['triton_launches']} | "
            f"{row['allocations']} | {row['largest_allocation_bytes'] / 2**20:.1f} | {row['fills']} | {row['syncs']} |"
        )
    head = data["composed_head"]
    lines += [
        "",
        f"SwAV head step composed of prototype_scores, sinkhorn and swav_cross_entropy (backend triton), "
        f"(V, B, D, K) = {tuple(head['shape'])}, T = "
        f"{head['T']}, forward and backward: {head['kernels']} GPU kernels ({head['triton_launches']} Triton), "
        f"{head['allocations']} allocations (largest {head['largest_allocation_bytes'] / 2**20:.1f} MiB), "
        f"{head['fills']} fills, {head['syncs']} host syncs",
        "",
    ]
    lines += [
        "Fused SwAV head step (prototype_cross_entropy, backend triton), forward and backward:",
        "",
        "| (V, B, D, K, T) | scores | sinkhorn | loss | backward | head (no Sinkhorn) | total "
        "| largest allocation (where) | V B K | host syncs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["fused_head"]:
        k = row["kernels"]
        largest = row["largest_allocation"]
        lines.append(
            f"| {tuple(row['shape'])} | {k['scores']} | {k['sinkhorn']} | {k['loss']} | {k['backward']} | "
            f"{row['head_kernels']} | {row['total_kernels']} | {tuple(largest[2])} ({largest[0]}) | {row['vbk']} | "
            f"{len(row['syncs'])} |"
        )
    lines.append("")
    graphs = dict(data["compile"])
    for kind, g in graphs.pop("fused_head").items():
        graphs[f"fused_head {kind}"] = g
    for name, g in graphs.items():
        lines.append(f"torch.compile(fullgraph=True) {name}: {g['graphs']} graph(s), {g['ops']} ops")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    if triton_interpreted():
        print(
            "benchmarks.audit: unset TRITON_INTERPRET (the interpreter would run the kernels)",
            file=sys.stderr,
        )
        return 2
    data = report()
    print(json.dumps(data, indent=1) if args.json else _table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
