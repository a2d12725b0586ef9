"""k-NN classification of frozen features, following the DINOv2 protocol.

Features are the backbone's CLS token after the final norm, L2-normalised; each
test image takes the ``k`` most cosine-similar training images and they vote for
their label with weight ``exp(similarity / T)`` (T = 0.07). Accuracy is micro-averaged
top-1 for every ``k`` in one pass (the neighbours for the largest ``k`` are computed
once, and each smaller ``k`` uses a prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks.datasets.fashion_mnist import LabelledImages
from tasks.datasets.tensors import uint8_to_input

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Predicted label per test sample for each ``k`` (features must already be L2-normalised)."""
    if not ks:
        raise ValueError("need at least one k")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    train_features = train_features.float()
    test_features = test_features.float()
    train_labels = train_labels.long()
    n_classes = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    max_k = min(max(ks), train_features.shape[0])
    predictions: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        sims = test_features[start : start + chunk_size] @ train_features.T
        top_sims, top_idx = sims.topk(max_k, dim=1)
        weights = torch.exp((top_sims - top_sims[:, :1]) / temperature)
        one_hot = F.one_hot(train_labels[top_idx], n_classes).float()
        for k in ks:
            kk = min(k, max_k)
            votes = (one_hot[:, :kk] * weights[:, :kk, None]).sum(dim=1)
            predictions[k].append(votes.argmax(dim=1))
    return {k: torch.cat(v) for k, v in predictions.items()}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
) -> dict[int, float]:
    """Top-1 accuracy (fraction in [0, 1]) for each ``k``."""
    preds = knn_predict(train_features, train_labels, test_features, ks, temperature, num_classes)
    test_labels = test_labels.long()
    return {k: float((p == test_labels).float().mean()) for k, p in preds.items()}


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised CLS tokens after the final norm, in eval mode, restoring the module's mode after.

    ``images`` may stay on the CPU: each batch moves to the backbone's device, features come back.
    """
    was_training = backbone.training
    device = next(backbone.parameters()).device
    backbone.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            feats = backbone.forward_features(batch)["x_norm_clstoken"]
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)
    finally:
        backbone.train(was_training)


@dataclass(frozen=True)
class KnnBenchmark:
    """A labelled train/test pair already turned into model inputs at one resolution."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @classmethod
    def from_labelled(cls, train: LabelledImages, test: LabelledImages, image_size: int) -> "KnnBenchmark":
        n_classes = int(max(train.labels.max(), test.labels.max())) + 1
        return cls(
            uint8_to_input(train.images, image_size),
            torch.as_tensor(train.labels),
            uint8_to_input(test.images, image_size),
            torch.as_tensor(test.labels),
            n_classes,
        )


def evaluate_knn(
    backbone: torch.nn.Module,
    bench: KnnBenchmark,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 256,
) -> dict[str, float]:
    """``{"knn_top1_k10": ..., ...}`` plus the feature-spread diagnostics of the test features."""
    train_f = extract_features(backbone, bench.train_inputs, batch_size)
    test_f = extract_features(backbone, bench.test_inputs, batch_size)
    acc = knn_accuracy(train_f, bench.train_labels, test_f, bench.test_labels, ks, temperature, bench.num_classes)
    result = {f"knn_top1_k{k}": v for k, v in acc.items()}
    result.update(feature_spread(test_f))
    return result


def feature_spread(features: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics of L2-normalised features: effective rank and mean per-dimension std.

    Effective rank is exp(entropy) of the normalised singular values of the centred
    features: 1 when every sample maps to one direction, up to the dimension when spread.
    """
    f = features.float()
    centred = f - f.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {
        "feature_effective_rank": float(torch.exp(entropy)),
        "feature_dim_std": float(f.std(dim=0).mean()),
    }
