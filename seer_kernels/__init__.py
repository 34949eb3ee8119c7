"""seer_kernels: fused Sinkhorn-Knopp, prototype scoring, multi-crop softmax
cross-entropy and the two fused into one head loss for SwAV/SEER training, as torch ops
with autograd.

    import seer_kernels as sk
    codes = sk.sinkhorn(scores, epsilon=0.05, iterations=3)        # (B, K) -> (B, K)
    scores = sk.prototype_scores(embeddings, prototypes)           # (N, D), (K, D) -> (N, K)
    loss = sk.swav_cross_entropy(crop_scores, codes, temperature=0.1)  # (V, B, K), (A, B, K)
    loss = sk.prototype_cross_entropy(z, prototypes, codes, temperature=0.1)  # (V, B, D), (K, D)

Every op takes `backend=None` ("reference", "cpu", "cuda", "triton"); see
`available_backends(device, op=None)` and `python -m seer_kernels.info`.
"""

from seer_kernels._backend import available_backends, build_info
from seer_kernels.ops.prototype_cross_entropy import prototype_cross_entropy
from seer_kernels.ops.prototype_scores import prototype_scores
from seer_kernels.ops.sinkhorn import sinkhorn
from seer_kernels.ops.swav_cross_entropy import swav_cross_entropy

__all__ = [
    "available_backends",
    "build_info",
    "prototype_cross_entropy",
    "prototype_scores",
    "sinkhorn",
    "swav_cross_entropy",
]
__version__ = "0.1.0"
