"""seer: a thin SEER/SwAV trainer for timm RegNets on the seer_kernels fused ops.

    seer-train [-c CONFIG] [key=value ...]        (also: python -m seer.train)

Modules: config (typed config), data (sources), augment (batched multi-crop), models
(timm trunk + SwAV head), optim (LARS/AdamW, schedule), distributed (DDP/FSDP2/ZeRO),
checkpoint (atomic checkpoints, backbone export, load_backbone), monitor (metrics,
plot, summary), train (the loop and the entry point), cli (the `seer-train` and
`seer-eval` commands, which name the [train] extra when it is missing).
"""
