"""Data: volumes with geometry, the one preprocess function, crops, masks, datasets, the synthetic phantom."""
