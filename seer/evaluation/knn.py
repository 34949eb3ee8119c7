"""Weighted k-nearest-neighbour classification on frozen features (the DINO / lightly rule).

Features are L2-normalized, so the dot product is the cosine similarity. Each test image takes
its k most similar training images; neighbour i votes for its class with weight exp(s_i / T);
the class with the largest summed weight wins. DINO and lightly use k = 20 and T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted class per test row. Chunked over test rows so the similarity matrix stays small."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    labels = train_labels.to(train.device)
    predictions = []
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        # Subtracting the row maximum before exp changes no vote ratio and keeps exp(1/0.07)-sized
        # numbers out of float32.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(top_sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)
