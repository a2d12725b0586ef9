"""Tiny NSFW classifiers the tests build themselves, saved as TorchScript files."""

from __future__ import annotations

import warnings

import torch


class BrightnessScore(torch.nn.Module):
    """A stand-in classifier: its one logit grows with the image's mean brightness (inputs in [0, 1])."""

    def __init__(self, side: int, pivot: float = 0.6, gain: float = 40.0) -> None:
        super().__init__()
        self.side, self.pivot, self.gain = side, pivot, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3 or x.shape[2] != self.side or x.shape[3] != self.side:
            raise ValueError(f"expected N x 3 x {self.side} x {self.side}")
        return (self.gain * (x.mean(dim=(1, 2, 3)) - self.pivot)).unsqueeze(1)


class FixedLinear(torch.nn.Module):
    """Logits from a linear layer over the flattened input: only one input size fits."""

    def __init__(self, side: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * side * side, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def save_torchscript(module: torch.nn.Module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)
