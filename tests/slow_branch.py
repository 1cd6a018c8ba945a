"""A semantic branch for the Ray tests and benchmark: colour classes, a set time per image,
and a marked image on which the first process to see it records its PID and waits to be killed.

It lives in an importable module (not a test file) because Ray actors unpickle it by reference.
"""

from __future__ import annotations

import os
import time

import numpy as np

# Pixels (0, 0)..(0, 3) of the marked image; the synthetic scenes never have them.
MARK = (1, 2, 3)
CLASSES = {0: "dark", 1: "dim", 2: "bright", 3: "light"}


def mark_image(path: str) -> None:
    """Marks the image at ``path`` (rewrites the file)."""
    from PIL import Image

    image = np.array(Image.open(path).convert("RGB"))
    image[0, :4] = MARK
    Image.fromarray(image).save(path)


class SlowColourBranch:
    """``image -> (class map, classes)``: the red channel in four bands, after ``seconds``.

    Args:
        seconds: time spent on each image.
        marker: on the marked image, the first process to create this file writes its PID
            there and sleeps (a test kills it); later processes go on as usual.
    """

    def __init__(self, seconds: float = 0.0, marker: str | None = None):
        self.seconds = seconds
        self.marker = marker

    def __call__(self, image: np.ndarray):
        if self.marker and (image[0, :4] == MARK).all() and _create(self.marker):
            time.sleep(120)  # killed meanwhile
        time.sleep(self.seconds)
        return (image[..., 0] // 64).astype(np.int64), CLASSES


def _create(path: str) -> bool:
    """Writes this process's PID and a newline to ``path`` unless the file exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def read_pid(path: str, timeout: float = 300) -> int:
    """The PID a process wrote with :func:`_create` (waits for the whole line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            text = open(path).read()
            if text.endswith("\n"):
                return int(text)
        time.sleep(0.05)
    raise TimeoutError(f"no PID in {path} after {timeout} s")
