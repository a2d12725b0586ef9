"""DINOv2 objectives: DINO (image level), iBOT (masked patches), KoLeo, teacher centering."""

from models.losses.centering import SoftmaxCentering, sinkhorn_knopp
from models.losses.dino import DINOLoss
from models.losses.ibot import IBOTPatchLoss
from models.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "SoftmaxCentering", "sinkhorn_knopp"]
