"""Losses: DINO, iBOT, KoLeo, Gram anchoring (pretraining) and Dice + cross-entropy (segmentation)."""

from MedDINOv3Core.losses.centering import CENTERINGS, SoftmaxCenter, TeacherCentering, sinkhorn_knopp
from MedDINOv3Core.losses.dino import DINOLoss
from MedDINOv3Core.losses.gram import GramLoss
from MedDINOv3Core.losses.ibot import iBOTPatchLoss, masked_patch_weights
from MedDINOv3Core.losses.koleo import KoLeoLoss

__all__ = [
    "CENTERINGS",
    "DINOLoss",
    "GramLoss",
    "KoLeoLoss",
    "SoftmaxCenter",
    "TeacherCentering",
    "iBOTPatchLoss",
    "masked_patch_weights",
    "sinkhorn_knopp",
]
