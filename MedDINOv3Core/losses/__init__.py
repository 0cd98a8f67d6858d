"""Losses: DINO, iBOT, KoLeo, Gram anchoring (pretraining) and Dice + cross-entropy (segmentation)."""
