"""SAM automatic mask generation that gives segment-anything's masks, faster, on the device.

``segment_anything.SamAutomaticMaskGenerator`` upsamples every candidate mask (three per point
prompt) to 1024x1024 and then to the image size before it filters anything, moves each kept mask
to the host as an RLE, and loops over masks in Python. :class:`FastMaskGenerator` runs the same
algorithm with the same settings and gives the same masks (up to float rounding in rare boundary
pixels), but:

- decodes the point prompts with
  :class:`~fiftyone_ssa.models.masks.prompt_decoder.PromptBatchDecoder` (segment-anything's mask
  decoder with the image-side work done once per image, and the mask upsampling network run only
  for prompts with a mask that passes the predicted-IoU filter);
- filters by predicted IoU on the decoder output, before any upsampling to the image (the filter
  does not depend on the upsampling);
- upsamples the survivors chunk by chunk, only over the un-padded part of SAM's input frame, and
  keeps only what the next steps need (stability score, box) instead of full-resolution masks:
  the low-resolution (256x256) logits of the survivors are kept, and full-resolution masks are
  materialised once, for the masks that remain after NMS;
- batches all point prompts of a crop (``points_per_batch``, 256 on CUDA), keeps every tensor on
  the model's device, runs NMS there, and needs no RLE;
- removes small regions (``min_mask_region_area``) with OpenCV on each mask's bounding box
  (:mod:`fiftyone_ssa.models.masks.small_regions`; the box crops are the only mask pixels that
  go to the host, in one transfer) with exactly segment-anything's semantics;
- optionally runs the image encoder and the mask decoder under autocast (``dtype``) and compiles
  the upsample-and-reduce step (``compile=True``).

Measured (H100, ViT-H with random "blob" weights, 1500x2250 image, the original SSA settings,
1505 masks), before the decoder above replaced segment-anything's module: segment-anything
39.9 s, this generator 5.1 to 5.5 s in float32 with the same masks (encoder 1.0 s, mask decoder
2.9 s, upsampling and stability 0.4 s, small regions 0.7 s), 3.5 s with bf16 autocast. The
replacement decoder has been measured on the CPU only (``benchmarks/bench_decoder.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_ssa.core.mask_set import MaskSet
from fiftyone_ssa.models.masks.prompt_decoder import ImageContext, PromptBatchDecoder
from fiftyone_ssa.models.masks.small_regions import postprocess_small_regions

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

# Bytes of float32 scratch per chunk of upsampled logits.
_UPSAMPLE_BUDGET = {"cuda": 2 << 30, "cpu": 256 << 20}


def check_rgb_image(image) -> None:
    """Raises ValueError (one line) unless ``image`` is an (H, W, 3) uint8 array, as SAM needs
    (segment-anything's own generator fails on anything else with an AssertionError)."""
    if not (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[2] == 3
        and image.dtype == np.uint8
    ):
        raise ValueError(
            "Expected `image` to be an (H, W, 3) uint8 array, but got "
            f"{type(image).__name__} {getattr(image, 'shape', '')} "
            f"{getattr(image, 'dtype', '')}"
        )


def check_point_grid_settings(
    points_per_side: int, crop_n_layers: int, crop_n_points_downscale_factor: int
) -> None:
    """Checks that every crop layer's point grid has at least one point per side.

    segment-anything gives layer i ``int(points_per_side / factor**i)`` points per side and
    divides by that number (a ZeroDivisionError when it is 0).

    Raises:
        ValueError: a layer would have no points.
    """
    if crop_n_points_downscale_factor < 1:
        raise ValueError(
            "Expected `crop_n_points_downscale_factor` >= 1, but got "
            f"{crop_n_points_downscale_factor}"
        )
    last = int(points_per_side / (crop_n_points_downscale_factor**crop_n_layers))
    if last < 1:
        raise ValueError(
            "Expected at least one point per side in every crop layer (points_per_side / "
            "crop_n_points_downscale_factor ** crop_n_layers >= 1), but got "
            f"{points_per_side} / {crop_n_points_downscale_factor} ** {crop_n_layers}"
        )


@dataclass
class SamMaskSet(MaskSet):
    """The masks of one image from :class:`FastMaskGenerator`, all tensors on one device.

    Rows are in segment-anything's output order (the order its final NMS returns).

    Attributes:
        masks: (N, H, W) bool.
        predicted_iou: (N,) float32, the decoder's quality estimate.
        stability_score: (N,) float32; NaN for an empty mask when no stability filter is set.
        boxes: (N, 4) float32 XYXY pixel indices, inclusive (a one-pixel mask at (x, y) has box
            (x, y, x, y)); (0, 0, 0, 0) for an empty mask. segment-anything's ``bbox`` is the
            same box as XYWH.
        point_coords: (N, 2) float32 XY of the point prompt, in image pixels.
        crop_boxes: (N, 4) float32 XYXY (exclusive end) of the crop the mask came from.
    """

    boxes: torch.Tensor
    point_coords: torch.Tensor
    crop_boxes: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.masks.shape[0]
        for name, width in (("boxes", 4), ("point_coords", 2), ("crop_boxes", 4)):
            value = getattr(self, name)
            if value.shape != (n, width):
                raise ValueError(
                    f"Expected `{name}` to be ({n}, {width}), but got shape {tuple(value.shape)}"
                )

    def select(self, keep: torch.Tensor) -> SamMaskSet:
        """The subset given by a (N,) bool or index tensor."""
        return SamMaskSet(
            self.masks[keep],
            self.predicted_iou[keep],
            self.stability_score[keep],
            self.boxes[keep],
            self.point_coords[keep],
            self.crop_boxes[keep],
        )

    @property
    def areas(self) -> torch.Tensor:
        """(N,) int64 pixel counts."""
        return self.masks.flatten(1).sum(1)


def _upsample_logits(
    low_res: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int], img_size: int
) -> torch.Tensor:
    """``Sam.postprocess_masks`` without the padded part of the 1024x1024 intermediate.

    Args:
        low_res: (n, h, w) float decoder logits (256x256 for SAM).
        input_size: (h, w) of the resized image inside SAM's square input frame.
        size: (H, W) to upsample to.
        img_size: side of SAM's input frame (1024).

    Returns:
        (n, H, W) float logits, equal to segment-anything's.
    """
    scale = img_size // low_res.shape[-1]
    # Rows/cols of the first bilinear stage that the un-padded region reads; the source index
    # of output i is (i + 0.5) / scale - 0.5, so this crop leaves every value unchanged.
    rows = min(low_res.shape[-2], math.ceil(input_size[0] / scale) + 1)
    cols = min(low_res.shape[-1], math.ceil(input_size[1] / scale) + 1)
    x = F.interpolate(
        low_res[:, None, :rows, :cols],
        (rows * scale, cols * scale),
        mode="bilinear",
        align_corners=False,
    )
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0]


def _logit_stats(
    upsample,
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    size: tuple[int, int],
    threshold: float,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What filtering needs from full-resolution logits, without keeping them.

    Args:
        upsample: ``(low_res, input_size, size) -> (n, H, W)`` logits, the model's
            post-processing (:meth:`FastMaskGenerator._upsample`).
        low_res: (n, h, w) float decoder logits.
        input_size: (h, w) of the resized crop in the model's input frame.
        size: (H, W) of the crop.
        threshold: the mask logit threshold.
        offset: the stability score's logit offset.

    Returns:
        intersections: (n,) int32 pixels above ``threshold + offset``.
        unions: (n,) int32 pixels above ``threshold - offset``.
        rows: (n, H) bool, rows that hold mask pixels (``> threshold``).
        cols: (n, W) bool, columns that hold mask pixels.
    """
    logits = upsample(low_res, input_size, size)
    intersections = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    unions = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    masks = logits > threshold
    return intersections, unions, masks.any(-1), masks.any(-2)


def _boxes_from_projections(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``batched_mask_to_box`` from row/column occupancy.

    Args:
        rows: (n, H) bool.
        cols: (n, W) bool.

    Returns:
        (n, 4) int64 XYXY inclusive; zeros for empty masks.
    """
    h, w = rows.shape[-1], cols.shape[-1]
    y = torch.arange(h, device=rows.device)
    x = torch.arange(w, device=cols.device)
    bottom = (rows * y).amax(-1)
    top = (rows * y + h * ~rows).amin(-1)
    right = (cols * x).amax(-1)
    left = (cols * x + w * ~cols).amin(-1)
    empty = (right < left) | (bottom < top)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * ~empty[:, None]


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class FastMaskGenerator:
    """segment-anything's automatic mask generator, batched and on the device.

    Arguments and defaults are those of ``SamAutomaticMaskGenerator`` (callers pass SSA's), plus
    the speed options. The result of :meth:`generate` has the same masks, scores and order as
    ``SamAutomaticMaskGenerator(model, output_mode="binary_mask", ...)`` with the same settings.

    Args:
        model: a ``segment_anything.modeling.Sam`` with segment-anything's own mask decoder; its
            device is where everything runs.
        points_per_side: points per side of the prompt grid; exclusive with ``point_grids``.
        points_per_batch: prompts per decoder call; default 256 on CUDA, 64 elsewhere.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 turns it off).
        stability_score_thresh: keep masks whose stability score is at least this (0: off).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which NMS drops duplicates within a crop.
        crop_n_layers: crop layers; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for the NMS between crops.
        crop_overlap_ratio: crop overlap as a fraction of the image's short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this**i.
        point_grids: explicit (n, 2) grids in [0, 1] per crop layer.
        min_mask_region_area: fill holes and remove islands smaller than this, then re-run NMS.
        mask_threshold: logit threshold; the model's ``mask_threshold`` (0.0) by default.
        dtype: autocast dtype for the encoder and decoder (``torch.bfloat16`` on CUDA: about
            1.5x faster on an H100 with ViT-H and segment-anything's decoder); it changes the
            logits slightly, so masks differ from segment-anything's at boundaries and near
            thresholds. ``None`` runs in float32 and reproduces segment-anything.
        compile: ``torch.compile`` the upsample-and-reduce step (no gain measured on an H100;
            for experiments).

    Raises:
        ValueError: on inconsistent settings, or another mask decoder class.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        mask_threshold: float | None = None,
        dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> None:
        from segment_anything.utils.amg import build_all_layer_point_grids

        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "Expected exactly one of `points_per_side` and `point_grids`, but got "
                f"points_per_side={points_per_side} and point_grids="
                f"{'None' if point_grids is None else f'{len(point_grids)} grids'}"
            )
        if crop_n_layers < 0:
            raise ValueError(f"Expected `crop_n_layers` >= 0, but got {crop_n_layers}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"Expected `points_per_side` >= 1, but got {points_per_side}")
            check_point_grid_settings(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
            point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        elif len(point_grids) != crop_n_layers + 1:
            raise ValueError(
                f"Expected {crop_n_layers + 1} point grids (one per crop layer), but got "
                f"{len(point_grids)}"
            )
        if points_per_batch is not None and points_per_batch < 1:
            raise ValueError(f"Expected `points_per_batch` >= 1, but got {points_per_batch}")
        if min_mask_region_area > 0:
            import cv2  # noqa: F401  (fail early, as segment-anything does)

        self.model = model
        self._decoder = self._make_decoder(model)
        self.device = next(model.parameters()).device
        self.point_grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
        if points_per_batch is None:
            points_per_batch = 256 if self.device.type == "cuda" else 64
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.mask_threshold = (
            self._default_mask_threshold() if mask_threshold is None else mask_threshold
        )
        self.dtype = dtype
        self._logit_stats = torch.compile(_logit_stats, dynamic=True) if compile else _logit_stats
        self._budget = _UPSAMPLE_BUDGET["cuda" if self.device.type == "cuda" else "cpu"]

    # ------------------------------------------------------------------ public

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> SamMaskSet:
        """The masks of one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            The masks with their scores, boxes, prompts and crops, on the model's device, in
            segment-anything's order.
        """
        from segment_anything.utils.amg import generate_crop_boxes

        check_rgb_image(image)
        height, width = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            (height, width), self.crop_n_layers, self.crop_overlap_ratio
        )
        # On an image one pixel high or wide, segment-anything's crop grid holds crops of no
        # pixels, and on a very elongated one (1 x 3000) crops whose short side SAM's resize
        # rounds to 0 pixels (its own generator fails on both: "height and width must be > 0").
        # SAM sees nothing of them; they can hold no mask.
        kept = [
            i
            for i, (x0, y0, x1, y1) in enumerate(crop_boxes)
            if x1 > x0 and y1 > y0 and min(self._input_size((y1 - y0, x1 - x0))) > 0
        ]
        crop_boxes = [crop_boxes[i] for i in kept]
        layer_idxs = [layer_idxs[i] for i in kept]
        if not crop_boxes:
            empty = torch.zeros((0, 4), dtype=torch.float32, device=self.device)
            return SamMaskSet(
                masks=torch.zeros((0, height, width), dtype=torch.bool, device=self.device),
                predicted_iou=torch.zeros(0, device=self.device),
                stability_score=torch.zeros(0, device=self.device),
                boxes=empty,
                point_coords=empty[:, :2],
                crop_boxes=empty,
            )
        crops = [
            self._process_crop(image, box, layer, (height, width), index)
            for index, (box, layer) in enumerate(zip(crop_boxes, layer_idxs))
        ]
        data = {key: torch.cat([crop[key] for crop in crops]) for key in crops[0]}
        crop_tensor = torch.as_tensor(crop_boxes, device=self.device)

        if len(crop_boxes) > 1:  # duplicates between crops; prefer masks from smaller crops
            data = self._nms(
                data,
                1 / self._box_area(crop_tensor[data["crop_index"]]),
                self.crop_nms_thresh,
            )

        masks = self._materialise(data, crop_boxes, (height, width))
        boxes = data["boxes"]
        if self.min_mask_region_area > 0 and len(masks):
            masks, boxes, keep = postprocess_small_regions(
                masks,
                boxes,
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
            )
            data = {key: value[keep] for key, value in data.items()}

        return SamMaskSet(
            masks=masks,
            predicted_iou=data["iou"].float(),
            stability_score=data["stability"].float(),
            boxes=boxes.float(),
            point_coords=data["points"].float(),
            crop_boxes=crop_tensor[data["crop_index"]].float(),
        )

    # ------------------------------------------------------------------ model hooks
    # What depends on the model family; subclasses for other SAM families override these.

    def _make_decoder(self, model):
        """The object :meth:`_prepare` and :meth:`_decode` use (raises ValueError for a model
        this generator cannot decode)."""
        return PromptBatchDecoder(model)

    def _default_mask_threshold(self) -> float:
        return self.model.mask_threshold

    @property
    def _frame_size(self) -> int:
        """Side of the model's square input frame (1024 for SAM)."""
        return self.model.image_encoder.img_size

    def _upsample(
        self, low_res: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        """(n, h, w) decoder logits -> (n, H, W) logits of a crop of ``size``, as the model's
        own post-processing gives them (``Sam.postprocess_masks``)."""
        return _upsample_logits(low_res, input_size, size, self._frame_size)

    def _model_points(self, points: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """(n, 2) XY crop pixels -> (n, 2) XY in the model's input frame, on the device."""
        from segment_anything.utils.transforms import ResizeLongestSide

        transformed = ResizeLongestSide(self._frame_size).apply_coords(points, size)
        return torch.as_tensor(transformed, device=self.device)

    def _prepare(self, features):
        """The per-crop decoder context of :meth:`_embed`'s features."""
        with self._autocast():
            return self._decoder.prepare(features)

    # ------------------------------------------------------------------ steps

    @staticmethod
    def _box_area(boxes: torch.Tensor) -> torch.Tensor:
        from torchvision.ops.boxes import box_area

        return box_area(boxes)

    @staticmethod
    def _nms(data: dict, scores: torch.Tensor, threshold: float) -> dict:
        from torchvision.ops.boxes import batched_nms

        boxes = data["boxes"]
        keep = batched_nms(
            boxes.float(),
            scores,
            torch.zeros(len(boxes), device=boxes.device),
            iou_threshold=threshold,
        )
        return {key: value[keep] for key, value in data.items()}

    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of a crop of ``size`` resized into SAM's input frame."""
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide.get_preprocess_shape(*size, self._frame_size)

    def _embed(self, crop: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SamPredictor.set_image: (1, C, h, w) features and the resized input size."""
        from segment_anything.utils.transforms import ResizeLongestSide

        model = self.model
        if model.image_format != "RGB":
            crop = crop[..., ::-1]
        resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(crop)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = tuple(tensor.shape[-2:])
        with self._autocast():
            features = model.image_encoder(model.preprocess(tensor))
        return features, input_size

    def _decode(
        self, context: ImageContext, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 (M, h, w) logits and (M,) IoU of the masks of B point prompts that pass the
        predicted-IoU filter, and which of the 3B masks those are ((3B,) bool)."""
        with self._autocast():
            low_res, iou, keep = self._decoder.decode(context, points, self.pred_iou_thresh)
        return low_res.float(), iou.float(), keep

    def _chunk_size(self, size: tuple[int, int]) -> int:
        per_mask = 4 * (self._frame_size**2 + 3 * size[0] * size[1])
        return max(1, self._budget // per_mask)

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
        crop_index: int,
    ) -> dict:
        from segment_anything.utils.amg import is_box_near_crop_edge

        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        size = crop.shape[:2]
        features, input_size = self._embed(crop)
        context = self._prepare(features)

        points = self.point_grids[layer] * np.array(size)[None, ::-1]  # (n, 2) XY, float64
        model_points = self._model_points(points, size)
        points = torch.as_tensor(points, device=self.device)
        chunk = self._chunk_size(size)

        kept: dict[str, list[torch.Tensor]] = {k: [] for k in ("low_res", "iou", "points")}
        kept["stability"], kept["boxes"] = [], []
        for batch in _chunks(len(points), self.points_per_batch):
            low_res, iou, keep = self._decode(context, model_points[batch])
            per_prompt = len(keep) // len(model_points[batch])  # multimask outputs (3)
            point_of = points[batch].repeat_interleave(per_prompt, dim=0)[keep]
            stats = [
                self._logit_stats(
                    self._upsample,
                    low_res[part],
                    input_size,
                    size,
                    self.mask_threshold,
                    self.stability_score_offset,
                )
                for part in _chunks(len(low_res), chunk)
            ]
            if not stats:
                continue
            inter, union, rows, cols = (torch.cat(parts) for parts in zip(*stats))
            stability = inter / union
            boxes = _boxes_from_projections(rows, cols)
            keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            if self.stability_score_thresh > 0.0:
                keep &= stability >= self.stability_score_thresh
            kept["low_res"].append(low_res[keep])
            kept["iou"].append(iou[keep])
            kept["points"].append(point_of[keep])
            kept["stability"].append(stability[keep])
            kept["boxes"].append(boxes[keep])

        if kept["iou"]:
            data = {key: torch.cat(values) for key, values in kept.items()}
        else:
            data = {
                "low_res": torch.zeros((0, *self._low_res_size(features)), device=self.device),
                "iou": torch.zeros(0, device=self.device),
                "points": torch.zeros((0, 2), dtype=torch.float64, device=self.device),
                "stability": torch.zeros(0, device=self.device),
                "boxes": torch.zeros((0, 4), dtype=torch.int64, device=self.device),
            }
        data = self._nms(data, data["iou"], self.box_nms_thresh)
        offset = torch.tensor([x0, y0, x0, y0], device=self.device)
        data["boxes"] = data["boxes"] + offset
        data["points"] = data["points"] + offset[:2]
        data["crop_index"] = torch.full(
            (len(data["iou"]),), crop_index, dtype=torch.int64, device=self.device
        )
        data["input_h"] = torch.full_like(data["crop_index"], input_size[0])
        data["input_w"] = torch.full_like(data["crop_index"], input_size[1])
        return data

    def _low_res_size(self, features: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the decoder's logits for :meth:`_embed`'s features."""
        side = 4 * features.shape[-1]  # the decoder upsamples its embedding 4x
        return side, side

    def _materialise(
        self, data: dict, crop_boxes: list[list[int]], orig_size: tuple[int, int]
    ) -> torch.Tensor:
        """(N, H, W) bool masks of the kept candidates from their low-resolution logits."""
        masks = torch.zeros((len(data["iou"]), *orig_size), dtype=torch.bool, device=self.device)
        if not len(masks):
            return masks
        crop_index = data["crop_index"].tolist()
        input_sizes = list(zip(data["input_h"].tolist(), data["input_w"].tolist()))
        for index, (x0, y0, x1, y1) in enumerate(crop_boxes):
            rows = [i for i, c in enumerate(crop_index) if c == index]
            if not rows:
                continue
            size = (y1 - y0, x1 - x0)
            input_size = input_sizes[rows[0]]
            chunk = self._chunk_size(size)
            for part in _chunks(len(rows), chunk):
                select = torch.tensor(rows[part], device=self.device)
                logits = self._upsample(data["low_res"][select], input_size, size)
                masks[select, y0:y1, x0:x1] = logits > self.mask_threshold
        return masks
