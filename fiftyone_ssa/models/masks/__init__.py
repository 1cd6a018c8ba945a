"""Mask branches: class-agnostic masks per image (SAM's automatic mask generation, its
checkpoint loading and fast batched generator, or masks already on the samples)."""
