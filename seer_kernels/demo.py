"""A short CPU run of every op on every usable backend against its reference, printing
the error against float64 and the time of each (`python -m seer_kernels.demo`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import seer_kernels as sk
from seer_kernels import _registry, reference


def _time(fn, repeat: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _row(op: str, backend: str, out: torch.Tensor, oracle: torch.Tensor, seconds: float) -> str:
    err = (out.double() - oracle.double()).abs().max().item()
    return f"{op:<24} {backend:<10} {err:>10.2e} {seconds * 1e3:>10.2f}"


def cases() -> dict[str, tuple[Callable[[str], torch.Tensor], Callable[[], torch.Tensor]]]:
    """Per op of seer_kernels._registry.OPS: a call on a given backend, and its float64
    oracle (tests/test_registry.py checks that every declared op has one)."""
    torch.manual_seed(0)
    emb = torch.randn(1024, 128)
    protos = torch.randn(3000, 128)
    scores = reference.prototype_scores(emb, protos)
    crop_emb = torch.randn(8, 256, 128)
    crops = F.normalize(crop_emb, dim=-1) @ F.normalize(protos, dim=1).t()
    codes = torch.softmax(torch.randn(2, 256, 3000) / 0.05, dim=-1)
    return {
        "sinkhorn": (
            lambda b: sk.sinkhorn(scores, epsilon=0.05, iterations=3, backend=b),
            lambda: reference.sinkhorn(scores.double(), 0.05, 3),
        ),
        "prototype_scores": (
            lambda b: sk.prototype_scores(emb, protos, backend=b),
            lambda: reference.prototype_scores(emb.double(), protos.double()),
        ),
        "swav_cross_entropy": (
            lambda b: sk.swav_cross_entropy(crops, codes, 0.1, backend=b),
            lambda: reference.swav_cross_entropy(crops.double(), codes.double(), 0.1),
        ),
        "prototype_cross_entropy": (
            lambda b: sk.prototype_cross_entropy(crop_emb, protos, codes, 0.1, backend=b),
            lambda: reference.prototype_cross_entropy(
                crop_emb.double(), protos.double(), codes.double(), 0.1
            ),
        ),
    }


def main() -> None:
    demo = cases()
    print(f"{'op':<24} {'backend':<10} {'max |err|':>10} {'ms':>10}   (CPU, vs float64)")
    for op in _registry.OPS:
        fn, oracle = demo[op]
        expected = oracle()
        for backend in sk.available_backends("cpu", op=op):
            if backend == "triton":
                continue  # the interpreter is a correctness tool, not a speed one
            out = fn(backend)
            print(_row(op, backend, out, expected, _time(lambda b=backend, f=fn: f(b))))


if __name__ == "__main__":
    main()
