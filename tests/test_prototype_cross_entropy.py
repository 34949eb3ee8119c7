"""seer_kernels.prototype_cross_entropy (the fused SwAV head): every available backend
against the float64 composition reference.prototype_cross_entropy, the loss and both
gradients.

Tolerance rule (tests/tolerance.py): on the same (rounded) inputs, the fused loss and each
gradient may differ from float64 by at most 2x the error of the reference composition
(prototype_scores into swav_cross_entropy) run in the input's precision, plus a small
per-dtype floor.

The grid covers V 2-10, A 1-2, odd B, D and K, K not a multiple of any tile (the CPU tiles
are 64-1024 columns; several tiles per task, several sample blocks, a partial last block),
normalize on and off, T 0.05-1, and fp32/bf16/fp16 (bf16 not under the Triton interpreter,
which has no bf16 arithmetic). The Triton interpreter runs Python per program: its shapes
stay small but reach every branch of the launcher (ragged B, D and K, several programs,
several K tiles per program).
"""

from __future__ import annotations

import pytest
import torch
from processes import run_with_capability
from tolerance import assert_close_rule

import seer_kernels as sk
from seer_kernels import _backend, _registry, reference

FUSED = [b for b in _backend.available_backends("cpu", op="prototype_cross_entropy") if b != "reference"]
HAS_CPP = _backend.extension() is not None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="seer_kernels._C is not built")
needs_triton = pytest.mark.skipif("triton" not in FUSED, reason="no Triton (or not interpreted)")

# The Triton kernels compute on -inf in masked lanes (never stored); under the
# interpreter numpy warns about those lanes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

GRAD_LOSS = 0.75  # != 1, so that the incoming gradient is really applied


def make_inputs(v, a, b, d, k, dtype, seed=0):
    """Gaussian embeddings and prototypes; codes = softmax rows times a per-row factor in
    [0.3, 1.7] (rows need not sum to 1)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(v, b, d, generator=g, dtype=torch.float64)
    p = torch.randn(k, d, generator=g, dtype=torch.float64)
    codes = torch.softmax(torch.randn(a, b, k, generator=g, dtype=torch.float64) * 2, dim=-1)
    codes = codes * (0.3 + 1.4 * torch.rand(a, b, 1, generator=g, dtype=torch.float64))
    return e.to(dtype), p.to(dtype), codes.to(dtype)


def loss_and_grads(fn, e, p, codes):
    e = e.detach().clone().requires_grad_(True)
    p = p.detach().clone().requires_grad_(True)
    loss = fn(e, p, codes)
    grads = torch.autograd.grad(loss, (e, p), grad_outputs=torch.tensor(GRAD_LOSS, dtype=loss.dtype))
    return (loss.detach(), *grads)


def fused(backend, temperature, normalize):
    return lambda e, p, c: sk.prototype_cross_entropy(
        e, p, c, temperature, normalize=normalize, backend=backend
    )


def composition(temperature, normalize):
    return lambda e, p, c: reference.prototype_cross_entropy(e, p, c, temperature, normalize)


def check_against_oracle(backend, e, p, codes, temperature, normalize, what=""):
    dtype = e.dtype
    ours = loss_and_grads(fused(backend, temperature, normalize), e, p, codes)
    same = loss_and_grads(composition(temperature, normalize), e, p, codes)
    oracle = loss_and_grads(composition(temperature, normalize), e.double(), p.double(), codes.double())
    assert ours[0].dtype == same[0].dtype, "loss dtype differs from the reference's"
    for name, x, s, o in zip(("loss", "grad_embeddings", "grad_prototypes"), ours, same, oracle, strict=True):
        if name != "loss":
            assert x.dtype == dtype, f"{what} {name}: dtype {x.dtype}"
        assert torch.isfinite(x).all(), f"{what} {name}: non-finite"
        assert_close_rule(x, s, o, dtype, what=f"{what} {name}")


# (V, A, B, D, K, T, normalize). CPU geometry (csrc/cpu/prototype_cross_entropy.cpp):
# kt = clamp(pow2(K / 16), 64, 1024) columns per tile, <= 16 groups of tiles, blocks of
# min(256, 32 MiB / (K acc)) rows.
CPU_CASES = [
    (2, 1, 1, 1, 1, 0.1, True),  # one row, one column, one tile narrower than a vector
    (2, 2, 7, 3, 5, 0.05, False),
    (3, 2, 7, 33, 3001, 1.0, True),  # 12 tiles of 256, the last 185 wide
    (5, 1, 33, 17, 257, 0.1, True),  # 5 tiles of 64, the last 1 wide
    (10, 2, 13, 65, 1999, 0.1, True),
    (4, 2, 301, 9, 3001, 0.1, False),  # 64 samples a block: 5 blocks, the last 45 samples
    (6, 2, 5, 31, 17001, 0.2, True),  # 17 tiles of 1024 in 9 groups of 2 tiles
    (8, 2, 64, 128, 3000, 0.1, True),  # SwAV's per-GPU head
    (9, 1, 3, 130, 100, 0.05, False),
]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "V{}A{}B{}D{}K{}T{}n{:d}".format(*c))
def test_cpu_matches_float64(case, dtype):
    v, a, b, d, k, t, normalize = case
    e, p, codes = make_inputs(v, a, b, d, k, dtype, seed=hash(case) % 1000)
    check_against_oracle("cpu", e, p, codes, t, normalize, what=f"cpu {case} {dtype}")


# Triton launcher branches at these sizes (under the interpreter): row blocks of 16 rows
# (ragged: V B not a multiple), K tiles of 16 (ragged), D padded to a power of two, both
# the forward and the K-tile kernel with several programs.
TRITON_CASES = [
    (2, 1, 1, 1, 1, 0.1, True),
    (3, 2, 7, 5, 37, 0.05, True),
    (4, 2, 5, 33, 20, 1.0, False),
    (10, 2, 3, 9, 50, 0.1, True),
    (2, 2, 9, 17, 3, 0.1, True),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "V{}A{}B{}D{}K{}T{}n{:d}".format(*c))
def test_triton_matches_float64(case, dtype):
    v, a, b, d, k, t, normalize = case
    e, p, codes = make_inputs(v, a, b, d, k, dtype, seed=hash(case) % 1000)
    check_against_oracle("triton", e, p, codes, t, normalize, what=f"triton {case} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
def test_float64_runs_in_float64(backend):
    e, p, codes = make_inputs(3, 2, 7, 10, 33, torch.float64, seed=5)
    ours = loss_and_grads(fused(backend, 0.1, True), e, p, codes)
    oracle = loss_and_grads(composition(0.1, True), e, p, codes)
    assert ours[0].dtype == torch.float64
    for x, o in zip(ours, oracle, strict=True):
        torch.testing.assert_close(x, o, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", FUSED)
def test_codes_of_another_dtype_and_strided(backend):
    """Sinkhorn codes are fp32 while the operands may be half, and the trainer's codes
    are the batch rows of (A, B + Q, K) codes: a strided slice."""
    e, p, _ = make_inputs(3, 2, 7, 12, 40, torch.float16, seed=3)
    _, _, full = make_inputs(3, 2, 7 + 5, 12, 40, torch.float32, seed=4)
    codes = full[:, :7]
    assert not codes.is_contiguous()
    ours = loss_and_grads(fused(backend, 0.1, True), e, p, codes)
    dense = loss_and_grads(fused(backend, 0.1, True), e, p, codes.contiguous())
    same = loss_and_grads(composition(0.1, True), e, p, codes)
    oracle = loss_and_grads(composition(0.1, True), e.double(), p.double(), codes.double())
    for x, y, s, o in zip(ours, dense, same, oracle, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert_close_rule(x, s, o, torch.float16)


@pytest.mark.parametrize("backend", FUSED)
def test_zero_rows_and_extremes(backend):
    """A zero embedding row and a zero prototype (the eps clamp: cosine 0, gradient
    through 1/eps), one-hot codes with an all-zero row, T = 0.01 (exponents of +-100)."""
    e, p, codes = make_inputs(3, 2, 6, 16, 40, torch.float64, seed=6)
    e[1, 2] = 0
    p[7] = 0
    hot = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    codes = torch.nn.functional.one_hot(hot, 40).double()
    codes[0, 0] = 0
    for t in (0.01, 0.1):
        ours = loss_and_grads(fused(backend, t, True), e.float(), p.float(), codes.float())
        same = loss_and_grads(composition(t, True), e.float(), p.float(), codes.float())
        oracle = loss_and_grads(composition(t, True), e, p, codes)
        for x, s, o in zip(ours, same, oracle, strict=True):
            assert_close_rule(x, s, o, torch.float32, what=f"{backend} T={t}")


@pytest.mark.parametrize("backend", FUSED)
def test_codes_get_no_gradient_and_needs_input_grad(backend):
    e, p, codes = make_inputs(3, 2, 5, 8, 9, torch.float32, seed=10)
    e.requires_grad_(True)
    codes.requires_grad_(True)
    sk.prototype_cross_entropy(e, p, codes, 0.1, backend=backend).backward()
    assert codes.grad is None and p.grad is None and e.grad is not None


@needs_cpp
@pytest.mark.parametrize("case", [(2, 1, 1, 1, 1), (3, 2, 4, 3, 5), (4, 2, 3, 6, 17)])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_cpu(case, normalize):
    v, a, b, d, k = case
    e, p, codes = make_inputs(v, a, b, d, k, torch.float64, seed=7)
    e.requires_grad_(True)
    p.requires_grad_(True)
    fn = lambda x, y: sk.prototype_cross_entropy(x, y, codes, 0.3, normalize=normalize, backend="cpu")
    assert torch.autograd.gradcheck(fn, (e, p), eps=1e-6, atol=1e-8, rtol=1e-6)


@needs_triton
def test_gradcheck_triton():
    e, p, codes = make_inputs(3, 2, 3, 5, 20, torch.float64, seed=9)
    e.requires_grad_(True)
    p.requires_grad_(True)
    fn = lambda x, y: sk.prototype_cross_entropy(x, y, codes, 0.3, backend="triton")
    assert torch.autograd.gradcheck(fn, (e, p), eps=1e-6, atol=1e-8, rtol=1e-6)


@needs_cpp
def test_cpu_is_bitwise_independent_of_the_thread_count():
    """Several sample blocks (the last partial) and 9 groups of 2 tiles: the loss and both
    gradients are the same bits with 1 and 2 threads."""
    e, p, codes = make_inputs(4, 2, 70, 24, 17001, torch.float32, seed=8)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(loss_and_grads(fused("cpu", 0.1, True), e, p, codes))
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)


@needs_cpp
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_capability_units(capability):
    """The DEFAULT and AVX2 units run in a subprocess with ATEN_CPU_CAPABILITY (read once
    per process); the machine's best unit runs in this one."""
    script = """
        import torch, seer_kernels as sk
        from seer_kernels import reference
        g = torch.Generator().manual_seed(0)
        e, p = torch.randn(3, 37, 20, generator=g), torch.randn(1001, 20, generator=g)
        c = torch.softmax(torch.randn(2, 37, 1001, generator=g), -1) * 1.3
        def run(fn, dtype):
            x, y = e.to(dtype).clone().requires_grad_(), p.to(dtype).clone().requires_grad_()
            fn(x, y, c.to(dtype)).backward()
            return torch.cat([x.grad.flatten(), y.grad.flatten()]).double()
        got = run(lambda x, y, z: sk.prototype_cross_entropy(x, y, z, 0.05, backend="cpu"), torch.float32)
        want = run(lambda x, y, z: reference.prototype_cross_entropy(x, y, z, 0.05), torch.float64)
        same = run(lambda x, y, z: reference.prototype_cross_entropy(x, y, z, 0.05), torch.float32)
        print(torch.backends.cpu.get_cpu_capability(), float((got - want).abs().max()),
              float((same - want).abs().max()))
        """
    err, ref_err = map(float, run_with_capability(script, capability))
    assert err <= 2 * ref_err + 1e-8, f"{capability}: grad error {err:.3e} vs reference {ref_err:.3e}"


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpp_ops(dtype):
    e, p, codes = make_inputs(3, 2, 5, 6, 11, dtype, seed=13)
    ops = torch.ops.seer_kernels
    torch.library.opcheck(
        ops.prototype_cross_entropy.default, (e.requires_grad_(), p.requires_grad_(), codes, 0.1, True)
    )
    _, ge, gp = ops.prototype_cross_entropy(e.detach(), p.detach(), codes, 0.1, True)
    torch.library.opcheck(ops.prototype_cross_entropy_backward.default, (torch.tensor(0.5), ge, gp))


@needs_triton
def test_opcheck_triton_ops():
    """Under the interpreter the AOT-dispatch check cannot run the op (the bare
    interpreted kernel cannot take functional tensors): it runs on a GPU."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    utils = {} if cuda else {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")}
    e, p, codes = (t.to(device) for t in make_inputs(3, 2, 5, 6, 11, torch.float32, seed=14))
    ops = torch.ops.seer_kernels
    args = (e.requires_grad_(), p.requires_grad_(), codes, 0.1, True)
    torch.library.opcheck(ops.prototype_cross_entropy_triton.default, args, **utils)
    _, ge, gp = ops.prototype_cross_entropy_triton(e.detach(), p.detach(), codes, 0.1, True)
    args = (torch.tensor(0.5, device=device), ge, gp)
    torch.library.opcheck(ops.prototype_cross_entropy_backward_triton.default, args, **utils)


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph(backend):
    e, p, codes = make_inputs(3, 2, 7, 8, 33, torch.float32, seed=15)

    def step(x, y, c):
        return 2.0 * sk.prototype_cross_entropy(x, y, c, 0.1, backend=backend) + x.square().mean()

    compiled = torch.compile(step, fullgraph=True)
    got = loss_and_grads(compiled, e, p, codes)
    want = loss_and_grads(step, e, p, codes)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@needs_cpp
def test_mixed_dtypes_promote_and_autocast():
    e, p, codes = make_inputs(3, 2, 5, 16, 33, torch.float32, seed=16)
    assert sk.prototype_cross_entropy(e.half(), p, codes, backend="cpu").dtype == torch.float32
    x = e.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sk.prototype_cross_entropy(x, p, codes, backend="cpu")
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32
    torch.testing.assert_close(loss, reference.prototype_cross_entropy(e, p, codes), rtol=2e-2, atol=2e-2)


def test_default_backends():
    spec = _registry.op("prototype_cross_entropy")
    assert _backend.resolve(None, torch.device("cpu"), "prototype_cross_entropy") == (
        "cpu" if HAS_CPP else "reference"
    )
    # No GPU has run the fused kernels: on CUDA the reference stays the default.
    assert spec.default_order("cuda")[0] == "reference"


# Bad input through the public API: the exception type and the argument it names.
BAD = [
    (lambda e, p, c: (e[:1], p, c[:1]), ValueError, "embeddings must hold V >= 2"),
    (lambda e, p, c: (e, p, torch.cat([c, c])), ValueError, "codes must hold 1 <= A <= V"),
    (lambda e, p, c: (e, p[:, :3], c), ValueError, "same feature size D"),
    (lambda e, p, c: (e, p[:4], c), ValueError, "codes must be (A, B, K)"),
    (lambda e, p, c: (e, p, c[:, :2]), ValueError, "codes must be (A, B, K)"),
    (lambda e, p, c: (e[:, :0], p, c[:, :0]), ValueError, "must not be empty"),
    (lambda e, p, c: (e[0], p, c), ValueError, "embeddings must be a 3-D"),
    (lambda e, p, c: (e, p[0], c), ValueError, "prototypes must be a 2-D"),
    (lambda e, p, c: (e, p, c[0]), ValueError, "codes must be a 3-D"),
    (lambda e, p, c: (e.long(), p, c), TypeError, "embeddings must be a floating-point"),
    (lambda e, p, c: (e, p, c.int()), TypeError, "codes must be a floating-point"),
    (lambda e, p, c: (e.tolist(), p, c), TypeError, "embeddings must be a torch.Tensor"),
    (lambda e, p, c: (e, p.to("meta"), c), ValueError, "prototypes on meta"),
]


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("make, exc, message", BAD)
def test_bad_input(backend, make, exc, message):
    e, p, codes = make_inputs(3, 2, 4, 6, 5, torch.float32)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        sk.prototype_cross_entropy(*make(e, p, codes), backend=backend)


@pytest.mark.parametrize(
    "temperature, exc", [(0.0, ValueError), (float("inf"), ValueError), ("0.1", TypeError)]
)
def test_bad_temperature_and_normalize(temperature, exc):
    e, p, codes = make_inputs(3, 2, 4, 6, 5, torch.float32)
    with pytest.raises(exc, match="temperature must be"):
        sk.prototype_cross_entropy(e, p, codes, temperature)
    with pytest.raises(TypeError, match="normalize must be a bool"):
        sk.prototype_cross_entropy(e, p, codes, 0.1, normalize=1)


@needs_cpp
def test_cpp_op_checks_its_operands():
    """Direct op calls (bypassing the wrapper) fail cleanly instead of reading out of bounds."""
    e, p, codes = make_inputs(3, 2, 4, 6, 5, torch.float32)
    ops = torch.ops.seer_kernels
    with pytest.raises(RuntimeError, match="codes"):
        ops.prototype_cross_entropy(e, p, codes[:, :3], 0.1, True)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.prototype_cross_entropy(e, p.double(), codes, 0.1, True)
    with pytest.raises(RuntimeError, match="grad_loss must be a scalar"):
        ops.prototype_cross_entropy_backward(torch.ones(2), e, p)


# ------------------------------------------------------------------------------ GPU
# Skipped without a CUDA GPU (tests/conftest.py); run by benchmarks/gpu_check.sh.

GPU_BACKENDS = list(_registry.op("prototype_cross_entropy").gpu_backends())
GPU_CASES = [
    (8, 2, 64, 128, 3000, 0.1, True),
    (6, 2, 32, 256, 16000, 0.1, True),
    (3, 1, 7, 33, 1001, 0.05, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "V{}A{}B{}D{}K{}T{}n{:d}".format(*c))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends(backend, case, dtype):
    if backend not in _backend.available_backends("cuda", op="prototype_cross_entropy"):
        pytest.skip(f"{backend} not available on cuda")
    v, a, b, d, k, t, normalize = case
    e, p, codes = (x.cuda() for x in make_inputs(v, a, b, d, k, dtype, seed=17))
    check_against_oracle(backend, e, p, codes, t, normalize, what=f"{backend} {case} {dtype}")
