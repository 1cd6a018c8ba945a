"""Images of every common kind go through SSA end to end, as the App shows them.

Grey, grey+alpha, RGBA, palette (with transparency), 1-bit, 16-bit PNG, 32-bit float TIFF,
CMYK JPEG, EXIF-rotated JPEGs, WebP, BMP, tiny (1x1, 2x3) and very large (8000x6000) images.
The models must receive an upright RGB uint8 array equal to an independent decoder's (OpenCV),
the outputs must have the upright image size, and a very large image must keep the semantic
branch at a bounded input resolution while votes and outputs stay at full resolution, in
bounded host memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_ssa import apply_ssa
from fiftyone_ssa.core.images import read_rgb, read_size
from fiftyone_ssa.labels import build_detections, detection_full_mask, detections_to_mask_set
from tests.fixtures.models import TINY_CLASSES

REPO = Path(__file__).resolve().parents[1]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with a few flat rectangles: (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack(
        [(yy * 255 // max(height - 1, 1)), (xx * 255 // max(width - 1, 1)), (yy + xx) % 256],
        axis=-1,
    ).astype(np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        image[y0 : y0 + height // 3 + 1, x0 : x0 + width // 3 + 1] = rng.integers(0, 256, 3)
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def write_kind(directory: Path, kind: str) -> Path:
    """Writes an image of the given kind (about 20x30 unless the kind is a size)."""
    rgb = _photo(20, 30)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    path = directory / f"{kind}.png"
    if kind == "grey":
        Image.fromarray(grey).save(path)
    elif kind == "grey-alpha":
        Image.fromarray(np.dstack([grey, 255 - grey]), mode="LA").save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.arange(30, dtype=np.uint8)[None].repeat(20, 0)])).save(
            path
        )
    elif kind == "palette":
        image = Image.fromarray(rgb).quantize(16)
        image.info["transparency"] = 0
        image.save(path, transparency=0)
    elif kind == "bilevel":
        Image.fromarray(grey > 128).save(path)
    elif kind == "grey16":
        Image.fromarray((grey.astype(np.uint16) * 257 + 3).astype(np.uint16)).save(path)
    elif kind == "float-tiff":
        path = directory / f"{kind}.tif"
        Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(path)
    elif kind == "cmyk-jpeg":
        path = directory / f"{kind}.jpg"
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    elif kind.startswith("exif-"):
        path = directory / f"{kind}.jpg"
        Image.fromarray(rgb).save(path, quality=95, exif=_exif(int(kind.split("-")[1])))
    elif kind == "webp":
        path = directory / f"{kind}.webp"
        Image.fromarray(rgb).save(path, lossless=True)
    elif kind == "bmp":
        path = directory / f"{kind}.bmp"
        Image.fromarray(rgb).save(path)
    elif kind == "tiny-1x1":
        Image.fromarray(rgb[:1, :1]).save(path)
    elif kind == "tiny-2x3":
        Image.fromarray(rgb[:2, :3]).save(path)
    else:
        raise ValueError(kind)
    return path


KINDS = [
    "grey",
    "grey-alpha",
    "rgba",
    "palette",
    "bilevel",
    "grey16",
    "float-tiff",
    "cmyk-jpeg",
    "exif-3",
    "exif-6",
    "exif-8",
    "exif-5",
    "webp",
    "bmp",
    "tiny-1x1",
    "tiny-2x3",
]


def reference_rgb(path: Path, kind: str) -> np.ndarray:
    """What the models should see, decoded by OpenCV (EXIF applied, alpha dropped)."""
    if kind == "grey16":
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)
        grey = np.rint(raw * 255.0 / 65535.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "float-tiff":
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)
        grey = np.clip(np.rint(raw * 255.0 / max(raw.max(), 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# Lossy decoders (JPEG's colour conversion, CMYK) may differ by rounding between libraries.
TOLERANCE = {"cmyk-jpeg": 3, "exif-3": 2, "exif-6": 2, "exif-8": 2, "exif-5": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_read_rgb_matches_an_independent_decoder(tmp_path, kind):
    path = write_kind(tmp_path, kind)
    image = read_rgb(path)
    expected = reference_rgb(path, kind)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape == expected.shape
    assert read_size(path) == image.shape[:2]
    diff = np.abs(image.astype(int) - expected.astype(int)).max()
    assert diff <= TOLERANCE.get(kind, 0), diff


def test_exif_rotation_is_applied_to_the_pixels(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise for display): the top-left pixel of the
    stored image ends at the top-right."""
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:5, :5] = (255, 0, 0)
    path = tmp_path / "rot.png"
    Image.fromarray(stored).save(path, exif=_exif(6))
    image = read_rgb(path)
    assert image.shape == (30, 20, 3)
    assert image[:5, -5:, 0].min() == 255 and image[-5:, :5, 0].max() == 0


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_dark_16bit_grey_is_scaled_by_its_bit_depth(tmp_path, suffix):
    """A 16-bit grey image whose values are all below 256 is nearly black, as browsers show it
    (its bit depth is known: mode "I;16"); it was read as if 8-bit."""
    values = (np.arange(20 * 30).reshape(20, 30) % 200 + 40).astype(np.uint16)
    path = tmp_path / f"dark16.{suffix}"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)
    expected = np.rint(raw * 255.0 / 65535.0).astype(np.uint8)
    image = read_rgb(path)
    assert image.max() <= 1
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=2))


def test_float_tiff_with_nan_and_inf_pixels(tmp_path):
    """A float TIFF (a depth map, say) with one NaN or inf pixel read as all black: it is scaled
    by its largest finite value; NaN and -inf read as 0, +inf as white."""
    values = np.linspace(0.0, 2.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    clean = tmp_path / "clean.tif"
    Image.fromarray(values, mode="F").save(clean)
    values[0, :3] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nonfinite.tif"
    Image.fromarray(values, mode="F").save(path)
    image = read_rgb(path)
    np.testing.assert_array_equal(image[0, :3, 0], [0, 255, 0])
    np.testing.assert_array_equal(image[:, 3:], read_rgb(clean)[:, 3:])
    np.testing.assert_array_equal(image[1:], read_rgb(clean)[1:])
    assert image[-1, -1, 0] == 255


def test_32bit_integer_grey_keeps_the_8bit_heuristic(tmp_path):
    """Mode "I" (bit depth unknown): values up to 255 are read as 8-bit, larger as 16-bit."""
    small = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.int32)
    path = tmp_path / "small.tif"
    Image.fromarray(small).save(path)
    with Image.open(path) as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(read_rgb(path)[..., 0], small.astype(np.uint8))
    large = small * 257
    path = tmp_path / "large.tif"
    Image.fromarray(large).save(path)
    np.testing.assert_array_equal(read_rgb(path)[..., 0], small.astype(np.uint8))


def test_every_kind_end_to_end_with_a_callable_branch(make_dataset, tmp_path):
    """The semantic branch sees exactly the reference RGB; outputs have the upright size."""
    seen = {}

    def recorder(image):
        seen[len(seen)] = image.copy()
        classes = (np.arange(image.shape[0])[:, None] * 3 // image.shape[0]).repeat(
            image.shape[1], 1
        )
        return classes, {0: "top", 1: "middle", 2: "bottom"}

    dataset = make_dataset()
    paths = {kind: write_kind(tmp_path, kind) for kind in KINDS}
    dataset.add_samples([fo.Sample(filepath=str(p), kind=k) for k, p in paths.items()])
    dataset.set_values("masks", [fo.Detections()] * len(KINDS))
    summary = apply_ssa(
        dataset, semantic_branch=recorder, mask_branch="field:masks", device="cpu", num_workers=0
    )
    assert summary.num_labelled == len(KINDS) and not summary.failures
    by_kind = {s["kind"]: s for s in dataset}
    images = list(seen.values())
    for kind, path in paths.items():
        expected = reference_rgb(path, kind)
        matches = [
            im
            for im in images
            if im.shape == expected.shape
            and np.abs(im.astype(int) - expected.astype(int)).max() <= TOLERANCE.get(kind, 0)
        ]
        assert matches, kind
        assert by_kind[kind]["ssa"].mask.shape == expected.shape[:2]
        assert by_kind[kind]["ssa_branch"].mask.shape == expected.shape[:2]


@pytest.mark.parametrize(
    "size", [(1, 1), (2, 3), (3, 2), (7, 9), (10, 10), (30, 20), (37, 53), (480, 7)]
)
def test_instance_masks_round_trip_exactly_at_any_size(size):
    """Masks written as Detections (cropped to their boxes) come back pixel for pixel, at
    sizes whose relative box coordinates are not exact binary fractions (FiftyOne's own
    ``to_segmentation`` truncates them and can shift a mask by one pixel)."""
    height, width = size
    rng = np.random.default_rng(height * 1000 + width)
    n = 24
    masks = torch.from_numpy(rng.random((n, height, width)) < 0.5)
    for i in range(3, n):  # ragged rectangles anywhere
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        y1, x1 = int(rng.integers(y0, height)), int(rng.integers(x0, width))
        box = torch.zeros((height, width), dtype=torch.bool)
        box[y0 : y1 + 1, x0 : x1 + 1] = True
        masks[i] &= box
        masks[i, y0, x0] = masks[i, y1, x1] = True
    masks[0] = True  # a full-image mask
    masks[1] = False  # an empty one (dropped)
    masks[2, :, :] = False
    masks[2, height - 1, width - 1] = True  # one pixel in the corner
    detections = build_detections(masks, ["x"] * n, [{} for _ in range(n)])
    kept = masks[masks.flatten(1).any(1)]
    assert len(detections.detections) == len(kept)
    for det, mask in zip(detections.detections, kept):
        assert np.array_equal(detection_full_mask(det, width, height), mask.numpy())
    round_trip = detections_to_mask_set(detections, size, torch.device("cpu")).masks
    assert torch.equal(round_trip, kept)


# SAM settings that keep a few masks of the blob SAM on any image.
FEW_MASKS = {
    "points_per_side": 2,
    "crop_n_layers": 0,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "min_mask_region_area": 0,
}


@pytest.mark.usefixtures("one_thread")
def test_every_kind_end_to_end_with_tiny_sam_and_segformer(
    make_dataset, tmp_path, blob_sam_dir, tiny_segformer_dir
):
    dataset = make_dataset()
    paths = {kind: write_kind(tmp_path, kind) for kind in KINDS}
    dataset.add_samples([fo.Sample(filepath=str(p), kind=k) for k, p in paths.items()])
    summary = apply_ssa(
        dataset,
        semantic_branch=str(tiny_segformer_dir),
        mask_branch=blob_sam_dir,
        device="cpu",
        batch_size=4,
        num_workers=0,
        **FEW_MASKS,
    )
    assert summary.num_labelled == len(KINDS), str(summary)
    for sample in dataset:
        height, width = read_size(sample.filepath)
        ssa, branch = sample["ssa"].mask, sample["ssa_branch"].mask
        assert ssa.shape == branch.shape == (height, width), sample["kind"]
        assert set(np.unique(ssa)) <= set(range(len(TINY_CLASSES)))
        covered = np.zeros((height, width), bool)
        for det in sample["ssa_masks"].detections:
            assert det.label in TINY_CLASSES
            x, y, w, h = det.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
            covered |= detection_full_mask(det, width, height)
        assert np.array_equal(ssa[~covered], branch[~covered]), sample["kind"]


# ------------------------------------------------------------------------------ 8000 x 6000

_LARGE_RUN = textwrap.dedent(
    """
    import json, os, resource, sys, time
    sys.path.insert(0, __REPO__)
    import numpy as np, torch
    import fiftyone as fo
    from fiftyone_ssa import apply_ssa
    from fiftyone_ssa.labels import detection_full_mask
    from fiftyone_ssa.models.registry import create_branch

    torch.set_num_threads(2)
    path, sam_dir, segformer_dir = sys.argv[1:4]
    semantic = create_branch(segformer_dir, kind="semantic", device="cpu")
    inputs = []
    semantic.model.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(tuple(kwargs["pixel_values"].shape)),
        with_kwargs=True,
    )
    masks = create_branch(sam_dir, kind="mask", device="cpu", **__OPTIONS__)
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=path))

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    start = time.perf_counter()
    summary = apply_ssa(dataset, semantic_branch=semantic, mask_branch=masks, num_workers=0,
                        output_dir=sys.argv[4])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sample = dataset.first()
    ssa, branch = sample["ssa"].mask, sample["ssa_branch"].mask
    dets = sample["ssa_masks"].detections
    height, width = ssa.shape
    # SSA only changes pixels some mask covers, to the label of the mask painted last there.
    painted = branch.copy()
    covered = np.zeros(ssa.shape, bool)
    order = sorted(range(len(dets)), key=lambda i: -dets[i].area)
    ids = {name: i for i, name in semantic.classes.items()}
    for i in order:
        full = detection_full_mask(dets[i], width, height)
        assert int(full.sum()) == dets[i].area
        painted[full] = ids[dets[i].label]
        covered |= full
    print(json.dumps({
        "labelled": summary.num_labelled, "errors": [f.error for f in summary.failures],
        "ssa_shape": list(ssa.shape), "branch_shape": list(branch.shape),
        "semantic_inputs": inputs, "num_masks": len(dets),
        "mask_paths_inside": all(d.mask_path is None or d.mask_path.startswith(sys.argv[4])
                                 for d in dets),
        "masks_area": sum(d.area for d in dets),
        "masks_on_disk": sum(d.mask_path is not None for d in dets),
        "covered_fraction": float(covered.mean()),
        "painting_matches": bool(np.array_equal(ssa, painted)),
        "branch_classes": sorted(int(c) for c in np.unique(branch)),
        "rss_growth_gb": (peak - before) / 1e9, "seconds": seconds,
    }))
    dataset.delete()
    """
)


def _write_large_image(path: Path, height: int = 6000, width: int = 8000) -> None:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (60, 110, 170)
    image[height // 6 : 2 * height // 3, width // 4 : 5 * width // 8] = (210, 40, 30)
    image[height // 2 : 11 * height // 12, width // 16 : 3 * width // 8] = (30, 190, 60)
    Image.fromarray(image).save(path, compress_level=1)


def test_very_large_image_bounded_semantic_input_full_resolution_outputs(
    tmp_path, blob_sam_dir, tiny_segformer_dir
):
    """8000x6000 end to end in a fresh process: the semantic model sees its own input size
    (64x64 for the tiny Segformer), votes and outputs are 8000x6000, large masks go to files
    under output_dir, and the peak host memory grows by far less than a 24 GB machine has."""
    path = tmp_path / "large.png"
    _write_large_image(path)
    code = _LARGE_RUN.replace("__REPO__", repr(str(REPO))).replace("__OPTIONS__", repr(FEW_MASKS))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), blob_sam_dir, str(tiny_segformer_dir)]
        + [str(tmp_path / "masks")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["labelled"] == 1 and not result["errors"]
    assert result["ssa_shape"] == result["branch_shape"] == [6000, 8000]
    assert result["semantic_inputs"] and all(
        s[-2:] == (64, 64) for s in map(tuple, result["semantic_inputs"])
    )
    assert result["num_masks"] > 0 and result["mask_paths_inside"]
    # More than 8M mask pixels go to PNG files (under output_dir), fewer stay in the database.
    expected_on_disk = result["num_masks"] if result["masks_area"] > 8_000_000 else 0
    assert result["masks_on_disk"] == expected_on_disk
    assert result["covered_fraction"] > 0 and result["painting_matches"]
    assert result["rss_growth_gb"] < 6.0, result
