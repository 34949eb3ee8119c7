"""A short CPU run of every op on every usable backend against its reference, printing
the error against float64 and the time of each (`python -m seer_kernels.demo`)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import seer_kernels as sk
from seer_kernels import reference


def _time(fn, repeat: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _row(op: str, backend: str, out: torch.Tensor, oracle: torch.Tensor, seconds: float) -> str:
    err = (out.double() - oracle.double()).abs().max().item()
    return f"{op:<20} {backend:<10} {err:>10.2e} {seconds * 1e3:>10.2f}"


def main() -> None:
    torch.manual_seed(0)
    emb = torch.randn(1024, 128)
    protos = torch.randn(3000, 128)
    scores = reference.prototype_scores(emb, protos)
    crops = F.normalize(torch.randn(8, 256, 128), dim=-1) @ F.normalize(protos, dim=1).t()
    codes = torch.softmax(torch.randn(2, 256, 3000) / 0.05, dim=-1)
    cases = {
        "sinkhorn": (
            lambda b: sk.sinkhorn(scores, 0.05, 3, backend=b),
            reference.sinkhorn(scores.double(), 0.05, 3),
        ),
        "prototype_scores": (
            lambda b: sk.prototype_scores(emb, protos, backend=b),
            reference.prototype_scores(emb.double(), protos.double()),
        ),
        "swav_cross_entropy": (
            lambda b: sk.swav_cross_entropy(crops, codes, 0.1, backend=b),
            reference.swav_cross_entropy(crops.double(), codes.double(), 0.1),
        ),
    }
    print(f"{'op':<20} {'backend':<10} {'max |err|':>10} {'ms':>10}   (CPU, vs float64)")
    for op, (fn, oracle) in cases.items():
        for backend in sk.available_backends("cpu"):
            if backend == "triton":
                continue  # the interpreter is a correctness tool, not a speed one
            try:
                out = fn(backend)
            except NotImplementedError:
                print(f"{op:<20} {backend:<10} {'not yet':>10}")
                continue
            print(_row(op, backend, out, oracle, _time(lambda b=backend, f=fn: f(b))))


if __name__ == "__main__":
    main()
