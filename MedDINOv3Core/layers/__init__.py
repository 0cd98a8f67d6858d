"""Building blocks of the DINOv3 Vision Transformer, one concept a file."""

from MedDINOv3Core.layers.attention import SelfAttention
from MedDINOv3Core.layers.block import Block
from MedDINOv3Core.layers.blur import gaussian_blur
from MedDINOv3Core.layers.drop_path import DropPath
from MedDINOv3Core.layers.layer_scale import LayerScale
from MedDINOv3Core.layers.mlp import Mlp
from MedDINOv3Core.layers.norm import LayerNorm2d
from MedDINOv3Core.layers.patch_embed import PatchEmbed
from MedDINOv3Core.layers.rope import RopePositionEmbedding, apply_rope, patch_coordinates, rope_periods, rotate_half

__all__ = [
    "Block",
    "DropPath",
    "LayerNorm2d",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RopePositionEmbedding",
    "SelfAttention",
    "apply_rope",
    "gaussian_blur",
    "patch_coordinates",
    "rope_periods",
    "rotate_half",
]
