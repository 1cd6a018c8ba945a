"""Semantic branches: a per-pixel class map per image (transformers models, callables, or a
Segmentation field already on the samples)."""
