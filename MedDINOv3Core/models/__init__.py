"""Networks: the DINOv3 ViT backbone (and, in their own files, the decoder, segmenter and SSL heads)."""

from MedDINOv3Core.models.vit import PRESETS, VisionTransformer, ViTConfig, ViTFeatures, build_vit, vit_config

__all__ = ["PRESETS", "ViTConfig", "ViTFeatures", "VisionTransformer", "build_vit", "vit_config"]
