"""Every Triton kernel compiles for the GPUs we ship for (sm_90 here), without a GPU.

The CPU suite runs the kernels under the Triton interpreter, which never runs Triton's
compiler; this test does, in a subprocess without TRITON_INTERPRET. It types float
scalars both ways a launch can: fp32 (an eager launch) and fp64 (torch.compile's
generated launcher passes Python floats as fp64), since a kernel that only compiles one
way breaks only under torch.compile on a GPU.
"""

from __future__ import annotations

import textwrap

import pytest
from processes import run_uninterpreted

from seer_kernels import _registry

# Representative compile-time constants per kernel (the launchers pick among such values).
CONSTEXPRS = {
    # PHASE 3: every phase in one cooperative launch, grid barriers included.
    "_sinkhorn_kernel": {
        "PHASE": 3, "TOTAL": False, "BLOCK_R": 128, "BLOCK_C": 32, "BLOCK_B": 4, "BLOCK_K": 1024, "ONE_TILE": False,
    },
    "_colstats_kernel": {"BLOCK_R": 128, "BLOCK_C": 32},
    "_partials_kernel": {"BLOCK_B": 1, "BLOCK_K": 4096, "ONE_TILE": True},
    "_sum_groups_kernel": {"BLOCK": 64, "GROUP_BLOCK": 32},
    "_codes_kernel": {"BLOCK_B": 16, "BLOCK_K": 128, "ONE_TILE": False, "NORMALIZE": True},
    "_xent_fwd_kernel": {"VP": 8, "AP": 2, "BK": 256, "F64": False},
    "_xent_bwd_kernel": {"VP": 8, "AP": 2, "BK": 256, "F64": False},
    "_rnorm_kernel": {"EPS": 1e-12, "BLOCK_M": 32, "BLOCK_D": 128},
    "_scores_kernel": {
        "NORMALIZE": True, "PRECISION": "ieee", "BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_D": 32, "GROUP_N": 8,
    },
    "_grad_kernel": {
        "NORMALIZE": True, "PROJECT": False, "PRECISION": "ieee", "EPS": 1e-12,
        "BLOCK_M": 64, "BLOCK_R": 32, "BLOCK_D": 128,
    },
    "_finish_kernel": {"NORMALIZE": True, "EPS": 1e-12, "BLOCK_M": 32, "BLOCK_D": 128},
    "_head_rows_kernel": {
        "A": 2, "NORMALIZE": True, "PRECISION": "ieee", "EPS": 1e-12, "F64": False,
        "BLOCK_R": 32, "BLOCK_K": 32, "BLOCK_D": 128,
    },
    "_head_cols_kernel": {
        "A": 2, "NORMALIZE": True, "PRECISION": "ieee", "EPS": 1e-12, "F64": False,
        "BLOCK_R": 32, "BLOCK_K": 32, "BLOCK_D": 128, "BLOCK_P": 128,
    },
    "_scale_kernel": {"BLOCK": 1024},
}  # fmt: skip
FLOATS = {"eps", "scale", "inv_t", "inv_t_lo", "norm", "coef", "log_b", "log_k", "fx", "inv_fx"}
# Pointer arguments that are not fp32 (the rest are): the Sinkhorn accumulators and the
# grid barrier word.
POINTERS = {"acc": "*i64", "sem": "*i32"}
INTS = {
    "B",
    "K",
    "V",
    "A",
    "N",
    "D",
    "M",
    "R",
    "groups",
    "stride_b",
    "rows_per_group",
    "iterations",
    "t",
    "stride_a",
    "E_BLOCKS",
    "R_SPLIT",
    "SPLITS",
    "VB",
    "PARTIALS",
    "NE",
    "NP",
}

SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs, floats, ints, pointers, float_type, modules = json.loads(sys.argv[1])
    seen = set()
    for module in modules:
        mod = importlib.import_module("seer_kernels.triton." + module)
        for name, fn in vars(mod).items():
            if not (isinstance(fn, triton.runtime.jit.JITFunction) and name.endswith("_kernel")):
                continue
            seen.add(name)
            consts = constexprs[name]
            sig = {}
            for p in fn.params:
                if p.is_constexpr:
                    sig[p.name] = "constexpr"
                elif p.name in floats:
                    sig[p.name] = float_type
                elif p.name in ints or p.name.startswith("s_"):
                    sig[p.name] = "i32"
                elif p.name in pointers:
                    sig[p.name] = pointers[p.name]
                else:
                    sig[p.name] = "*fp32"
            src = ASTSource(fn, signature=sig, constexprs=consts)
            triton.compile(src, target=GPUTarget("cuda", 90, 32))
            print("compiled", module, name, float_type)
    missing = set(constexprs) - seen
    assert not missing, f"kernels gone or renamed: {missing}"
    """
)


@pytest.mark.parametrize("float_type", ["fp32", "fp64"])
def test_every_triton_kernel_compiles_for_sm90(float_type):
    pytest.importorskip("triton")
    import json

    # The Triton module of every declared op that has a Triton backend.
    modules = [name for name, spec in _registry.OPS.items() if "triton" in spec.backends]
    args = json.dumps([CONSTEXPRS, sorted(FLOATS), sorted(INTS), POINTERS, float_type, modules])
    res = run_uninterpreted("-c", SCRIPT, args, timeout=600)
    assert res.stdout.count("compiled") == len(CONSTEXPRS), res.stdout


def test_no_kernel_spills_at_the_launch_configurations():
    """Every Triton kernel, at each configuration its launcher picks for the audited
    shapes, compiles for sm_90 without register spills, and the committed table
    (benchmarks/results/triton-resources-sm90.md, `python -m benchmarks.triton_resources`)
    is what the kernels compile to now."""
    pytest.importorskip("triton")
    run_uninterpreted("-m", "benchmarks.triton_resources", "--check", timeout=1200)


def test_programs_per_sm_follows_the_gpu():
    """The cooperative grid's bound per SM: sm_90's limits without properties, the
    device's own registers, threads and shared memory with them."""
    pytest.importorskip("triton")
    from types import SimpleNamespace

    from seer_kernels.triton._common import programs_per_sm

    assert programs_per_sm(128, 0, 4) == 4  # 64K registers / (128 x 128 threads)
    assert programs_per_sm(32, 0, 4) == 16  # 64 warps / 4
    assert programs_per_sm(32, 100 * 1024, 4) == 2  # 228 KiB / 100 KiB
    smaller = SimpleNamespace(
        regs_per_multiprocessor=65536,
        max_threads_per_multi_processor=1536,
        shared_memory_per_multiprocessor=100 * 1024,
    )
    assert programs_per_sm(32, 0, 4, smaller) == 12  # 48 warps / 4
    assert programs_per_sm(32, 40 * 1024, 4, smaller) == 2
