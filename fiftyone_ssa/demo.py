"""The demo: a dataset of scikit-image's sample photos, labelled by SSA with the default models."""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import torch
from PIL import Image

from fiftyone_ssa.fields import (
    LIGHT_MASK_BRANCH,
    LIGHT_MASK_OPTIONS,
    LIGHT_SEMANTIC_BRANCH,
    ssa_branches,
)
from fiftyone_ssa.labelling.ssa import apply_ssa
from fiftyone_ssa.models import weights
from fiftyone_ssa.models.registry import create_branch

# scikit-image ships these photos with the package (no download).
DEMO_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def write_demo_images(directory: str) -> list[str]:
    """Writes scikit-image's sample photos as PNG files and returns their paths."""
    import skimage.data

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in DEMO_IMAGES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        image = np.asarray(loader())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        path = os.path.join(directory, f"{name}.png")
        Image.fromarray(image[..., :3].astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def run_demo(
    name: str = "ssa-demo",
    semantic_branch: str | None = None,
    mask_branch: str | None = None,
    device: str | None = None,
    image_dir: str | None = None,
    mask_options: dict | None = None,
    download: bool = False,
) -> fo.Dataset:
    """Builds the demo dataset and runs SSA on it, printing a per-image summary.

    Args:
        name: the dataset name (replaced if it exists).
        semantic_branch: defaults to SSA's default, or a light preset without a GPU.
        mask_branch: defaults to SSA's default, or a light preset without a GPU.
        device: torch device.
        image_dir: where the photos are written (default: FiftyOne's dataset directory).
        mask_options: mask generator settings.
        download: fetch missing preset weights first (needs internet).

    Returns:
        The labelled dataset.
    """
    light = not (torch.cuda.is_available() if device is None else str(device).startswith("cuda"))
    filled = []  # what the light CPU preset fills in (the branches not given)
    if light and not mask_branch:
        points = LIGHT_MASK_OPTIONS["points_per_side"]
        filled.append(f"{LIGHT_MASK_BRANCH}, {points} points per side")
    if light and not semantic_branch:
        filled.append(LIGHT_SEMANTIC_BRANCH)
    if filled:
        print(
            f"No GPU: using the light CPU preset ({', '.join(filled)}) so the demo "
            "finishes in minutes."
        )
    semantic_branch, mask_branch, options = ssa_branches(
        semantic_branch, mask_branch, mask_options, light
    )
    if download:
        for preset in (semantic_branch, mask_branch):
            if preset in weights.PRESETS and not weights.is_present(preset):
                weights.download(preset)
    # Load the models first: missing weights fail here, within seconds, all named at once.
    weights.check_present([semantic_branch, mask_branch])
    semantic = create_branch(semantic_branch, kind="semantic", device=device)
    masks = create_branch(mask_branch, kind="mask", device=device, **options)

    image_dir = image_dir or os.path.join(fo.config.default_dataset_dir, name, "images")
    paths = write_demo_images(image_dir)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])

    summary = apply_ssa(
        dataset, semantic_branch=semantic, mask_branch=masks, device=device, progress=True
    )
    print(f"\n{'image':<28}{'masks':>6}{'seconds':>9}  classes")
    for entry in summary.samples:
        shown = ", ".join(entry.classes[:8]) + (" ..." if len(entry.classes) > 8 else "")
        status = entry.error or shown
        print(
            f"{os.path.basename(entry.filepath):<28}{entry.num_masks:>6}{entry.seconds:>9.2f}  {status}"
        )
    print(f"\n{summary}\nOpen the result in the App:\n  fiftyone app launch {name}")
    return dataset
