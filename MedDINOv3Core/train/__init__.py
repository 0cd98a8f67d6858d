"""Training loops: self-supervised pretraining (stages 1-3) and segmentation finetuning."""
