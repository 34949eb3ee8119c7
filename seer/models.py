"""The SwAV network: a timm RegNet trunk, our projection head and prototypes.

    backbone = build_backbone("regnety_320")          # timm, num_classes=0: pooled features
    model = build_model(cfg.model)                     # SwAVModel(backbone, head, prototypes)
    z, scores = model(crops_by_resolution, queue_embeddings)   # scores: batch rows, then queue rows
    z, loss = model(crops_by_resolution, fused_loss=fn)         # the fused head: fn(z, weight, normalize=...)

The trunk is timm's (it carries the SEER RegNetY configurations regnety_320 ... regnety_2560
and stage-level gradient checkpointing); nothing here re-implements a RegNet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from seer.config import ModelConfig
from seer_kernels.swav import SwAVProjectionHead, SwAVPrototypes

# SEER's 10B RegNet (VISSL configs/config/pretrain/seer/models/regnet10B.yaml) is not a
# timm entry point; it is timm's RegNetY with these widths (9.3B trunk parameters).
REGNET_10B = dict(w0=1744, wa=620.83, wm=2.52, group_size=1010, depth=27)


def timm_name(arch: str, timm_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The timm entry point and keyword arguments of `arch` (resolves regnety_10b)."""
    kwargs = {k: v for k, v in timm_kwargs.items() if k != "num_classes"}
    if arch == "regnety_10b":
        return "regnety_2560", {**REGNET_10B, **kwargs}
    return arch, kwargs


def build_backbone(arch: str, **timm_kwargs: Any) -> nn.Module:
    """A timm model returning pooled features (num_classes=0); `timm_kwargs` are passed to
    timm.create_model (for RegNets they overlay the RegNetCfg, e.g. downsample="avg").
    `regnety_10b` is SEER's 10B RegNet, built as timm's RegNetY with REGNET_10B widths."""
    arch, kwargs = timm_name(arch, timm_kwargs)
    try:
        return center_tap_on_1x1(timm.create_model(arch, pretrained=False, num_classes=0, **kwargs))
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"cannot build backbone {arch!r} with {kwargs}: {exc}") from None
    except TypeError as exc:  # an option the architecture does not take
        raise ValueError(f"backbone {arch!r} does not accept {kwargs}: {exc}") from None


class CenterTapConv2d(nn.Conv2d):
    """nn.Conv2d that computes a 'same'-padded k x k convolution of a 1 x 1 map as the 1 x 1
    convolution with the kernel's center tap: every other tap multiplies zero padding, so
    the output and both gradients are the same (the weight gradient of the other taps is
    zero either way). Why: small inputs (the demo's 32 and 16 px crops) leave a RegNet's
    last stages on 1 x 1 maps, where oneDNN's weight gradient of the grouped 3 x 3 conv
    (8 channels per group) falls back to im2col + GEMM on an AVX2 CPU (ONEDNN_VERBOSE): 25-30 ms for
    (512, 368, 1, 1) against 5.7 ms for the center tap, measured on 1 thread; it was a
    third of the demo's training step there. Other inputs take nn.Conv2d's path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            return super().forward(x)
        kh, kw = self.kernel_size
        weight = self.weight[:, :, kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1]
        return nn.functional.conv2d(x, weight, self.bias, 1, 0, 1, self.groups)


def _center_tap_applies(conv: nn.Module) -> bool:
    """A zero-padded odd square kernel whose padding keeps a 1 x 1 map 1 x 1 (2p = d (k - 1)),
    so that only its center tap ever meets the input."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    (kh, kw), (ph, pw), (dh, dw) = conv.kernel_size, conv.padding, conv.dilation
    return kh == kw and kh % 2 == 1 and kh > 1 and 2 * ph == dh * (kh - 1) and 2 * pw == dw * (kw - 1)


def center_tap_on_1x1(model: nn.Module) -> nn.Module:
    """Makes every convolution where it applies a CenterTapConv2d, in place (the class only:
    parameters, state-dict keys and results on other inputs are unchanged)."""
    for module in model.modules():
        if _center_tap_applies(module):
            module.__class__ = CenterTapConv2d
    return model


class SwAVModel(nn.Module):
    """Trunk -> projection head -> embedding z -> prototype scores, or the head's loss.

    Crops come grouped by resolution so the trunk runs once per resolution. The queue's
    embeddings go through the prototypes in the same call as the batch (one matmul, one
    FSDP unshard): `forward` returns z (N, D) and the scores (N + Q, K) of the N crop rows
    followed by the Q queue rows; the caller detaches the queue rows (they only feed the
    Sinkhorn). Returning whole tensors, not slices, keeps FSDP's backward hooks safe.

    With `fused_loss` (the fused head), `forward` returns z and
    `self.prototypes(z, fused_loss=fused_loss)`: fused_loss(z, weight, normalize=...)
    computes the loss (and whatever else it returns) with the prototype weight inside the
    prototypes' forward, where FSDP has gathered it and DDP sees it used; no (N, K)
    scores exist (seer_kernels.swav.swav_prototype_loss).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, prototypes: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.prototypes = prototypes

    def forward(
        self,
        crops: list[torch.Tensor],
        queue: torch.Tensor | None = None,
        *,
        fused_loss: Callable | None = None,
    ) -> tuple[torch.Tensor, Any]:
        features = torch.cat([self.backbone(x) for x in crops])
        z = self.head(features).float()
        # The prototype layer in fp32 whatever the autocast policy: the Sinkhorn at eps 0.05
        # and the softmax at T 0.1 amplify bf16 rounding (VISSL keeps this layer in fp32).
        # The prototypes normalize both operands inside the fused ops (cosine scores).
        with torch.autocast(device_type=z.device.type, enabled=False):
            if fused_loss is not None:
                return z, self.prototypes(z, fused_loss=fused_loss)
            rows = z if queue is None else torch.cat([z, queue.to(z.dtype)])
            scores = self.prototypes(rows)
        return z, scores


def fused_head(head: str, backend: str, device: torch.device) -> bool:
    """Whether the SwAV head runs fused (config swav.head): "fused", "composed", or for
    "auto" whether seer_kernels.prototype_cross_entropy's backend for `device` (the forced
    `backend`, else the declared default) is a fused one, which the declaration makes so
    only where it was measured: the cpu backend on the CPU, not yet on CUDA."""
    if head != "auto":
        return head == "fused"
    from seer_kernels import _backend, _registry

    requested = backend or os.environ.get(_backend.ENV_VAR, "")
    if requested and requested not in _registry.op("prototype_cross_entropy").backends:
        return False  # a backend the fused head has no kernel for: the composed head
    return _backend.resolve(backend or None, device, "prototype_cross_entropy") != "reference"


def compile_blocks(backbone: nn.Module, input_sizes: int) -> int:
    """Regional compilation: every block of the trunk's stages compiled in place
    (`nn.Module.compile`, so state-dict keys keep their names), the stem and the stage
    loops left eager. Blocks of one shape share one compiled graph (torch compiles a
    module's forward once and guards on its parameters' shapes), so compile time scales
    with the distinct block shapes, not the depth. Returns the number of blocks compiled.

    All blocks share one code object (the block class's forward), whose graphs count
    against dynamo's recompile limit (8): distinct block shapes x `input_sizes` crop
    resolutions may exceed it, after which dynamo silently runs the rest eagerly, so the
    limit is raised to what this trunk can need."""
    from timm.models.regnet import RegStage

    blocks = [
        block for stage in backbone.children() if isinstance(stage, RegStage) for block in stage.children()
    ]
    if not blocks:
        raise ValueError(
            f"train.compile=regional compiles the blocks of a timm RegNet trunk; {type(backbone).__name__} has none "
            "(use train.compile=true to compile the whole trunk)"
        )
    import torch._dynamo

    needed = len(blocks) * max(input_sizes, 1)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
    for block in blocks:
        block.compile()
    return len(blocks)


def build_model(cfg: ModelConfig, backend: str | None = None) -> SwAVModel:
    backbone = build_backbone(cfg.arch, **cfg.timm_kwargs)
    head = SwAVProjectionHead(
        input_dim=backbone.num_features,
        hidden_dim=cfg.head_hidden_dim,
        output_dim=cfg.head_output_dim,
        num_layers=cfg.head_layers,
        batch_norm=cfg.head_batch_norm,
    )
    # Freezing is done by the training loop (gradients dropped before the optimizer step),
    # which keeps the set of parameters that receive gradients fixed, as DDP requires.
    prototypes = SwAVPrototypes(
        cfg.head_output_dim, cfg.n_prototypes, n_steps_frozen_prototypes=0, backend=backend
    )
    return SwAVModel(backbone, head, prototypes)


def parameter_counts(model: SwAVModel) -> dict[str, int]:
    """Parameters of each part; works on the meta device (no memory spent)."""
    parts = {"trunk": model.backbone, "head": model.head, "prototypes": model.prototypes}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts["total"] = sum(counts.values())
    return counts


def flops_per_image(cfg: ModelConfig, crop_sizes: list[int]) -> float:
    """Training FLOPs of one image: the forward of trunk and head at every crop size,
    counted by torch.utils.flop_counter on the meta device (no memory, no compute: seconds
    even for the 10B trunk), plus the prototype matmul (2 D K per crop), times 3 for the
    forward and the backward (2x the forward). Activation checkpointing recomputes the
    forward, which this does not count: it is the model's FLOPs, not the device's work."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(cfg, backend="reference").eval()  # BatchNorm takes a batch of one
    forward = 0
    for size in crop_sizes:
        x = torch.empty(1, 3, size, size, device="meta")
        with FlopCounterMode(display=False) as counter:
            model.head(model.backbone(x))
        forward += counter.get_total_flops() + 2 * cfg.head_output_dim * cfg.n_prototypes
    return 3.0 * forward
