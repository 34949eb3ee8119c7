"""seer_kernels.swav_cross_entropy: every available backend against the float64 oracle.

Tolerance rule (tests/tolerance.py): on the same (rounded) inputs, the fused loss and
gradient may differ from the float64 reference by at most 2x the error of PyTorch's
reference loop run in the input's precision, plus a small per-dtype floor.

The grid covers every value of B {1, 7, 64, 1023}, K {1, 3, 3000}, V {2, 3, 8},
A {1, 2, V}, T {0.05, 0.1, 1.0} and dtype (fp32/fp16/bf16; bf16 not under the Triton
interpreter, which has no bf16 arithmetic) in a covering subset, not the full product:
the Triton interpreter runs Python per program, so its shapes stay small.
"""

from __future__ import annotations

import pytest
import torch
from processes import run_with_capability
from tolerance import assert_close_rule

import seer_kernels as sk
from seer_kernels import _backend, reference

FUSED = [b for b in _backend.available_backends("cpu", op="swav_cross_entropy") if b != "reference"]
HAS_CPP = _backend.extension() is not None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="seer_kernels._C is not built")
needs_triton = pytest.mark.skipif("triton" not in FUSED, reason="no Triton (or not interpreted)")

# The Triton kernels compute on -inf in the masked lanes of padded crops/columns (never
# stored); under the interpreter numpy warns about those lanes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

# grad_loss != 1 so that the incoming gradient is really used.
GRAD_LOSS = 0.75


def make_inputs(v, a, b, k, dtype, seed=0, *, scale=1.0, row_sums=True):
    """Cosine-like scores in [-scale, scale]; codes = softmax rows times a per-row factor
    in [0.3, 1.7] (rows need not sum to 1), so R_v != A - [v < A]."""
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(v, b, k, generator=g, dtype=torch.float64) * 2 - 1) * scale
    codes = torch.softmax(torch.randn(a, b, k, generator=g, dtype=torch.float64) * 2, dim=-1)
    if row_sums:
        codes = codes * (0.3 + 1.4 * torch.rand(a, b, 1, generator=g, dtype=torch.float64))
    return scores.to(dtype), codes.to(dtype)


def loss_and_grad(fn, scores, codes, temperature):
    x = scores.detach().clone().requires_grad_(True)
    loss = fn(x, codes, temperature)
    (grad,) = torch.autograd.grad(loss, x, grad_outputs=torch.tensor(GRAD_LOSS, dtype=loss.dtype))
    return loss.detach(), grad


def check_against_oracle(backend, scores, codes, temperature, dtype, what=""):
    fused = loss_and_grad(
        lambda s, c, t: sk.swav_cross_entropy(s, c, t, backend=backend), scores, codes, temperature
    )
    same = loss_and_grad(reference.swav_cross_entropy, scores, codes, temperature)
    oracle = loss_and_grad(reference.swav_cross_entropy, scores.double(), codes.double(), temperature)
    assert fused[0].dtype == same[0].dtype, "loss dtype differs from the reference's"
    assert fused[1].dtype == scores.dtype, "gradient must have the dtype of scores"
    assert torch.isfinite(fused[0]) and torch.isfinite(fused[1]).all(), f"{what}: non-finite result"
    assert_close_rule(fused[0], same[0], oracle[0], dtype, what=f"{what} loss")
    assert_close_rule(fused[1], same[1], oracle[1], dtype, what=f"{what} grad")


# (V, A, B, K, T): every value of every factor appears; big shapes only where cheap.
CPU_CASES = [
    (2, 1, 1, 1, 0.1),
    (2, 2, 7, 3, 0.05),
    (3, 1, 7, 3000, 1.0),
    (3, 3, 64, 3, 0.1),
    (3, 2, 1023, 1, 0.05),
    (8, 8, 7, 3000, 0.1),
    (8, 2, 64, 3000, 0.05),
    (8, 1, 1023, 3, 1.0),
    (2, 2, 1023, 3000, 0.1),
    (8, 3, 1, 3000, 0.05),
]
TRITON_CASES = [
    (2, 1, 1, 1, 0.1),
    (2, 2, 7, 3, 0.05),
    (3, 3, 7, 3000, 1.0),
    (3, 1, 64, 3, 0.1),
    (8, 2, 7, 3, 0.05),
    (8, 8, 1, 33, 1.0),
    (2, 2, 1, 3000, 0.1),
]


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "V{}A{}B{}K{}T{}".format(*c))
def test_cpu_matches_float64(case, dtype):
    v, a, b, k, t = case
    scores, codes = make_inputs(v, a, b, k, dtype, seed=hash(case) % 1000)
    check_against_oracle("cpu", scores, codes, t, dtype, what=f"cpu {case} {dtype}")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "V{}A{}B{}K{}T{}".format(*c))
def test_triton_matches_float64(case, dtype):
    v, a, b, k, t = case
    scores, codes = make_inputs(v, a, b, k, dtype, seed=hash(case) % 1000)
    check_against_oracle("triton", scores, codes, t, dtype, what=f"triton {case} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
def test_codes_of_another_dtype(backend):
    """Sinkhorn codes are fp32 while scores may be half: mixed dtypes are accepted."""
    scores, _ = make_inputs(3, 2, 7, 33, torch.float16, seed=3)
    _, codes = make_inputs(3, 2, 7, 33, torch.float32, seed=4)
    fused = loss_and_grad(lambda s, c, t: sk.swav_cross_entropy(s, c, t, backend=backend), scores, codes, 0.1)
    same = loss_and_grad(reference.swav_cross_entropy, scores, codes, 0.1)
    oracle = loss_and_grad(reference.swav_cross_entropy, scores.double(), codes.double(), 0.1)
    assert_close_rule(fused[0], same[0], oracle[0], torch.float16, what="loss")
    assert_close_rule(fused[1], same[1], oracle[1], torch.float16, what="grad")


@pytest.mark.parametrize("backend", FUSED)
def test_float64_runs_in_float64(backend):
    scores, codes = make_inputs(3, 2, 7, 33, torch.float64, seed=5)
    fused = loss_and_grad(lambda s, c, t: sk.swav_cross_entropy(s, c, t, backend=backend), scores, codes, 0.1)
    oracle = loss_and_grad(reference.swav_cross_entropy, scores, codes, 0.1)
    assert fused[0].dtype == torch.float64
    torch.testing.assert_close(fused[0], oracle[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused[1], oracle[1], rtol=1e-10, atol=1e-13)


@needs_cpp
@pytest.mark.parametrize("case", [(2, 1, 1, 1), (3, 2, 4, 5), (4, 4, 3, 17)])
def test_gradcheck_cpu(case):
    v, a, b, k = case
    scores, codes = make_inputs(v, a, b, k, torch.float64, seed=6)
    scores.requires_grad_(True)
    fn = lambda s: sk.swav_cross_entropy(s, codes, 0.3, backend="cpu")
    assert torch.autograd.gradcheck(fn, (scores,), eps=1e-6, atol=1e-8, rtol=1e-6)


# Extremes: every score +-1 at T = 0.01 (exponents of +-100, ties at the max), scores of
# +-30 at T = 0.01 (exp(6000) overflows any float without the max shift), codes with
# exact zeros (hard one-hot targets), codes rows far from summing to 1.
def _extreme_inputs(kind, dtype):
    g = torch.Generator().manual_seed(7)
    v, a, b, k = 3, 2, 7, 40
    scores, codes = make_inputs(v, a, b, k, torch.float64, seed=8)
    if kind in ("pm1", "pm30"):
        sign = torch.randint(0, 2, (v, b, k), generator=g).double() * 2 - 1
        scores = sign * (1.0 if kind == "pm1" else 30.0)
    elif kind == "zeros":
        hot = torch.randint(0, k, (a, b), generator=g)
        codes = torch.nn.functional.one_hot(hot, k).double()
        codes[0, 0] = 0.0  # an all-zero code row: that sample's term vanishes
    elif kind == "row_sums":
        codes = codes * torch.tensor([0.01, 10.0]).view(a, 1, 1)
    return scores.to(dtype), codes.to(dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("kind", ["pm1", "pm30", "zeros", "row_sums"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extremes(backend, kind, dtype):
    scores, codes = _extreme_inputs(kind, dtype)
    check_against_oracle(backend, scores, codes, 0.01, dtype, what=f"{backend} {kind}")


@pytest.mark.parametrize("backend", FUSED)
def test_noncontiguous_inputs(backend):
    base_s, base_c = make_inputs(3, 2, 7, 66, torch.float32, seed=9)
    scores = base_s.transpose(0, 1).contiguous().transpose(0, 1)  # (V, B, K) with B outermost
    codes = torch.cat([base_c, base_c], dim=-1)[..., ::2]  # stride 2 along K
    assert not scores.is_contiguous() and not codes.is_contiguous()
    codes_c = codes.contiguous()
    got = loss_and_grad(lambda s, c, t: sk.swav_cross_entropy(s, c, t, backend=backend), scores, codes, 0.1)
    want = loss_and_grad(
        lambda s, c, t: sk.swav_cross_entropy(s, c, t, backend=backend), base_s, codes_c, 0.1
    )
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
def test_codes_get_no_gradient(backend):
    scores, codes = make_inputs(3, 2, 5, 9, torch.float32, seed=10)
    scores.requires_grad_(True)
    codes.requires_grad_(True)
    sk.swav_cross_entropy(scores, codes, 0.1, backend=backend).backward()
    assert codes.grad is None and scores.grad is not None


@needs_cpp
def test_cpu_lse_output_and_determinism():
    """The saved lse is logsumexp(scores / T) in fp64; the loss is bitwise the same for
    any thread count (one partial per sample, summed in index order)."""
    scores, codes = make_inputs(8, 2, 300, 257, torch.float32, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        loss1, lse = torch.ops.seer_kernels.swav_cross_entropy(scores, codes, 0.07)
        torch.set_num_threads(max(2, threads))
        loss2, _ = torch.ops.seer_kernels.swav_cross_entropy(scores, codes, 0.07)
    finally:
        torch.set_num_threads(threads)
    assert lse.dtype == torch.float64 and lse.shape == (8, 300)
    torch.testing.assert_close(lse, torch.logsumexp(scores.double() / 0.07, dim=-1), rtol=1e-7, atol=0)
    assert torch.equal(loss1, loss2)


@needs_triton
def test_triton_lse_output():
    scores, codes = make_inputs(3, 2, 5, 300, torch.float32, seed=12)
    _, lse = torch.ops.seer_kernels.swav_cross_entropy_triton(scores, codes, 0.07)
    assert lse.dtype == torch.float64
    torch.testing.assert_close(lse, torch.logsumexp(scores.double() / 0.07, dim=-1), rtol=1e-7, atol=0)


@needs_cpp
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_capability_units(capability):
    """The AVX-512 unit runs in this process on an AVX-512 machine; the DEFAULT and AVX2
    units run here in a subprocess with ATEN_CPU_CAPABILITY (read once per process)."""
    script = """
        import torch, seer_kernels as sk
        from seer_kernels import reference
        torch.manual_seed(0)
        s = torch.rand(3, 37, 1000) * 2 - 1
        c = torch.softmax(torch.randn(2, 37, 1000), -1) * 1.3
        x = s.clone().requires_grad_()
        sk.swav_cross_entropy(x, c, 0.05, backend="cpu").backward()
        x64 = s.double().requires_grad_()
        loss64 = reference.swav_cross_entropy(x64, c.double(), 0.05)
        loss64.backward()
        x32 = s.clone().requires_grad_()
        loss32 = reference.swav_cross_entropy(x32, c, 0.05)
        loss32.backward()
        err, ref_err = (x.grad.double() - x64.grad).abs().max(), (x32.grad.double() - x64.grad).abs().max()
        print(torch.backends.cpu.get_cpu_capability(), float(err), float(ref_err))
        """
    err, ref_err = map(float, run_with_capability(script, capability))
    assert err <= 2 * ref_err + 2e-6, f"{capability}: grad error {err:.3e} vs reference {ref_err:.3e}"


@needs_cpp
def test_opcheck_cpp_ops():
    scores, codes = make_inputs(3, 2, 7, 33, torch.float32, seed=13)
    torch.library.opcheck(
        torch.ops.seer_kernels.swav_cross_entropy.default, (scores.requires_grad_(), codes, 0.1)
    )
    _, lse = torch.ops.seer_kernels.swav_cross_entropy(scores.detach(), codes, 0.1)
    torch.library.opcheck(
        torch.ops.seer_kernels.swav_cross_entropy_backward.default,
        (torch.tensor(0.5), scores.detach(), codes, lse, 0.1),
    )


@needs_triton
def test_opcheck_triton_ops():
    scores, codes = make_inputs(2, 2, 3, 9, torch.float32, seed=14)
    torch.library.opcheck(
        torch.ops.seer_kernels.swav_cross_entropy_triton.default, (scores.requires_grad_(), codes, 0.1)
    )
    _, lse = torch.ops.seer_kernels.swav_cross_entropy_triton(scores.detach(), codes, 0.1)
    torch.library.opcheck(
        torch.ops.seer_kernels.swav_cross_entropy_backward_triton.default,
        (torch.tensor(0.5), scores.detach(), codes, lse, 0.1),
    )


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph(backend):
    scores, codes = make_inputs(3, 2, 7, 33, torch.float32, seed=15)

    def step(s, c):
        return 2.0 * sk.swav_cross_entropy(s, c, 0.1, backend=backend) + s.square().mean()

    compiled = torch.compile(step, fullgraph=True)
    got = loss_and_grad(lambda s, c, t: compiled(s, c), scores, codes, 0.1)
    want = loss_and_grad(lambda s, c, t: step(s, c), scores, codes, 0.1)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)


@needs_cpp
def test_compile_fullgraph_default_backend():
    scores, codes = make_inputs(2, 1, 5, 17, torch.float32, seed=16)
    compiled = torch.compile(lambda s, c: sk.swav_cross_entropy(s, c), fullgraph=True)
    got = loss_and_grad(lambda s, c, t: compiled(s, c), scores, codes, 0.1)
    want = loss_and_grad(reference.swav_cross_entropy, scores, codes, 0.1)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-7)


@needs_cpp
def test_autocast_scores_accumulate_in_fp32():
    """Under autocast the prototype matmul yields bf16 scores; the loss stays fp32."""
    g = torch.Generator().manual_seed(17)
    emb, protos = torch.randn(3 * 7, 16, generator=g), torch.randn(33, 16, generator=g)
    _, codes = make_inputs(3, 2, 7, 33, torch.float32, seed=18)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = (emb @ protos.t()).view(3, 7, 33)
        loss = sk.swav_cross_entropy(scores, codes, 0.1, backend="cpu")
    assert scores.dtype == torch.bfloat16 and loss.dtype == torch.float32
    check_against_oracle("cpu", scores, codes, 0.1, torch.bfloat16, what="autocast")


def test_default_backend_is_fused_cpu():
    assert _backend.resolve(None, torch.device("cpu")) == ("cpu" if HAS_CPP else "reference")


# Bad input through the public API: the exception type and the argument it names.
BAD = [
    (lambda s, c: (s[:1], c[:1], 0.1), ValueError, "scores must hold V >= 2"),
    (lambda s, c: (s, torch.cat([c, c]), 0.1), ValueError, "codes must hold 1 <= A <= V"),
    (lambda s, c: (s, c[:, :3], 0.1), ValueError, "codes (A, B, K) must match"),
    (lambda s, c: (s, c[..., :4], 0.1), ValueError, "codes (A, B, K) must match"),
    (lambda s, c: (s, c, 0.0), ValueError, "temperature must be"),
    (lambda s, c: (s, c, -0.1), ValueError, "temperature must be"),
    (lambda s, c: (s, c, float("nan")), ValueError, "temperature must be"),
    (lambda s, c: (s, c, "0.1"), TypeError, "temperature must be a real number"),
    (lambda s, c: (s.long(), c, 0.1), TypeError, "scores must be a floating-point"),
    (lambda s, c: (s, c.int(), 0.1), TypeError, "codes must be a floating-point"),
    (lambda s, c: (s[0], c, 0.1), ValueError, "scores must be a 3-D"),
    (lambda s, c: (s, c[0], 0.1), ValueError, "codes must be a 3-D"),
    (lambda s, c: (s.tolist(), c, 0.1), TypeError, "scores must be a torch.Tensor"),
    (lambda s, c: (s, c.to("meta"), 0.1), ValueError, "codes on meta"),
    (lambda s, c: (s[:, :0], c[:, :0], 0.1), ValueError, "scores must not be empty"),
]


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("make, exc, message", BAD)
def test_bad_input(backend, make, exc, message):
    scores, codes = make_inputs(3, 2, 4, 5, torch.float32)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        sk.swav_cross_entropy(*make(scores, codes), backend=backend)


@needs_cpp
def test_cpp_op_checks_its_operands():
    """Direct op calls (bypassing the wrapper) fail cleanly instead of reading out of bounds."""
    scores, codes = make_inputs(3, 2, 4, 5, torch.float32)
    with pytest.raises(RuntimeError, match="codes"):
        torch.ops.seer_kernels.swav_cross_entropy(scores, codes[:, :3], 0.1)
    with pytest.raises(RuntimeError, match="float32/float64/float16/bfloat16"):
        torch.ops.seer_kernels.swav_cross_entropy(scores, codes.to(torch.float8_e4m3fn), 0.1)
    _, lse = torch.ops.seer_kernels.swav_cross_entropy(scores, codes, 0.1)
    with pytest.raises(RuntimeError, match="lse must be"):
        torch.ops.seer_kernels.swav_cross_entropy_backward(torch.tensor(1.0), scores, codes, lse[:2], 0.1)
