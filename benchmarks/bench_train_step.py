"""End-to-end: one SwAV training step (trunk, head, prototypes, Sinkhorn, loss, backward,
optimizer step) with the fused ops against the same step on the reference ops, and the
SwAV part alone (prototype scoring + Sinkhorn + loss, forward and backward, on fixed
embeddings). extra_info carries images/s and, on GPU, peak memory.

Shapes: CPU, the tiny default trunk (regnetx_002 widths, 2x32 + 4x16 crops, batch 64,
K = 3000); GPU (bf16 autocast), SwAV's recipe on RegNetY-4GF (2x224 + 6x96, K = 3000,
queue 3840, batch 64) and SEER's shape on regnety_320 (2x160 + 4x96, K = 16384, 10
Sinkhorn iterations, batch 32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seer_kernels as sk
from benchmarks.conftest import timed
from seer.config import ModelConfig
from seer.models import build_model
from seer_kernels.swav import swav_loss

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# name: (arch, timm kwargs, global crops, global px, local crops, local px, batch, K, queue, iterations)
CASES = {
    "cpu": {"tiny": ("regnetx_002", {"downsample": "avg"}, 2, 32, 4, 16, 64, 3000, 0, 3)},
    "cuda": {
        "swav_regnety_040": ("regnety_040", {}, 2, 224, 6, 96, 64, 3000, 3840, 3),
        "seer_regnety_320": ("regnety_320", {}, 2, 160, 4, 96, 32, 16384, 0, 10),
    },
}[DEVICE.type]
FUSED = next(b for b in sk.available_backends(DEVICE) if b in ("triton", "cuda", "cpu"))
BACKENDS = [FUSED, "reference"]


def _setup(case: str, backend: str):
    arch, kwargs, g, gpx, n_local, lpx, batch, k, queue, iters = CASES[case]
    cfg = ModelConfig(
        arch=arch, timm_kwargs=kwargs, head_hidden_dim=2048, head_output_dim=128, n_prototypes=k
    )
    model = build_model(cfg, backend=backend).to(DEVICE)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    crops = [
        torch.randn(g * batch, 3, gpx, gpx, device=DEVICE, generator=gen),
        torch.randn(n_local * batch, 3, lpx, lpx, device=DEVICE, generator=gen),
    ]
    queue_rows = (
        F.normalize(torch.randn(g * queue, 128, device=DEVICE, generator=gen), dim=1) if queue else None
    )
    return model, opt, crops, queue_rows, (g, g + n_local, batch, k, iters)


def _step(model, opt, crops, queue_rows, dims, backend):
    g, v, batch, k, iters = dims
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
        _, scores = model(crops, queue_rows)
    crop_scores = scores[: v * batch].view(v, batch, k)
    queue_scores = scores[v * batch :].detach().view(g, -1, k) if queue_rows is not None else None
    loss = swav_loss(crop_scores, g, sinkhorn_iterations=iters, queue_scores=queue_scores, backend=backend)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_train_step(benchmark, case, backend):
    torch.manual_seed(0)
    model, opt, crops, queue_rows, dims = _setup(case, backend)
    run = timed(lambda: _step(model, opt, crops, queue_rows, dims, backend), DEVICE)
    run()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"train step {case} {DEVICE.type}"
    benchmark.pedantic(run, rounds=3 if DEVICE.type == "cpu" else 10, warmup_rounds=1)
    images = dims[2]
    benchmark.extra_info.update(
        op="train_step",
        backend=backend,
        baseline=backend == "reference",
        shape=case,
        dtype="bf16" if DEVICE.type == "cuda" else "fp32",
        images_per_s=images / benchmark.stats.stats.median,
    )
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_swav_head_and_loss(benchmark, case, backend):
    _, _, g, _, n_local, _, batch, k, queue, iters = CASES[case]
    v = g + n_local
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    z = F.normalize(torch.randn(v * batch, 128, device=DEVICE, generator=gen), dim=1).requires_grad_()
    protos = torch.randn(k, 128, device=DEVICE, generator=gen).requires_grad_()

    def head_and_loss():
        scores = sk.prototype_scores(z, protos, backend=backend).view(v, batch, k)
        loss = swav_loss(scores, g, sinkhorn_iterations=iters, backend=backend)
        loss.backward()
        return loss

    run = timed(head_and_loss, DEVICE)
    benchmark.group = f"swav head+loss {case} {DEVICE.type}"
    benchmark.pedantic(run, rounds=5 if DEVICE.type == "cpu" else 20, warmup_rounds=1)
    benchmark.extra_info.update(
        op="swav_head_and_loss",
        backend=backend,
        baseline=backend == "reference",
        shape=f"V={v} B={batch} K={k} T={iters}",
        dtype="fp32",
    )
