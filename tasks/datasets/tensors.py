"""Turn decoded uint8 images into normalised model inputs, the way evaluation sees them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def uint8_to_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,H,W] or [N,H,W,3] -> float [N,3,size,size], bicubic-resized, ImageNet-normalised.

    Grayscale is repeated over three channels so one backbone handles both kinds of data.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None].expand(-1, 3, -1, -1)
    elif x.ndim == 4 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected [N,H,W] or [N,H,W,3] images, got shape {tuple(x.shape)}")
    x = x.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
