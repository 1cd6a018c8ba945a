"""Reading images as the models expect them: RGB, uint8, upright as the App shows them."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Converts a PIL image of any common mode to an upright RGB uint8 array.

    EXIF orientation is applied (as browsers, and so the FiftyOne App, display the image);
    16-bit and 32-bit grey images are scaled to 8 bits instead of clipped: a 16-bit image
    (modes "I;16*") always by 65535, as browsers show it, even when its values are all small;
    a 32-bit integer image (mode "I", bit depth unknown) by 65535 when a value exceeds 255, else
    by 255; a float image (mode "F") by its largest finite value (NaN and -inf read as 0, +inf
    as the top). Alpha is dropped; palette, grey and CMYK images are converted to RGB.

    Args:
        image: a PIL image.

    Returns:
        (H, W, 3) uint8 array.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "F":
            # By the largest finite value: one NaN or inf pixel made every pixel black.
            finite = np.isfinite(values)
            top = max(float(values.max(initial=0, where=finite)), 1.0)
            values = np.where(finite, values, np.where(values > 0, top, 0.0))
        else:
            top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as an upright RGB uint8 array.

    Args:
        path: the image file.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image (unknown format, truncated).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb_array(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """The upright (H, W) of an image file, reading only its header.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    # EXIF orientations 5-8 rotate by 90 degrees.
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
