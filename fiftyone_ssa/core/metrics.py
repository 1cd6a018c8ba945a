"""Semantic segmentation metrics as mmsegmentation defines them, from a streaming confusion matrix.

Definition (mmsegmentation's ``IoUMetric``; the numbers papers report as mIoU and aAcc):

- Pixels whose ground truth equals ``ignore_index`` are excluded from everything.
- ``reduce_zero_label`` (ADE20K's raw annotations): ground truth 0 becomes ``ignore_index`` and
  every other value is shifted down by one (``ignore_index`` itself stays ignored).
- Per class ``c``, over the WHOLE collection (sums over images, not a mean of per-image scores):
  ``intersection[c]`` = pixels with ground truth ``c`` predicted ``c``;
  ``union[c]`` = pixels with ground truth ``c`` or prediction ``c``;
  ``IoU[c] = intersection[c] / union[c]``; ``Acc[c] = intersection[c] / gt_pixels[c]``.
  Both are NaN for a class absent from the measured quantities (0 / 0).
- ``mIoU`` and ``mAcc`` are NaN-means over classes: classes absent from both prediction and
  ground truth do not count. A class that is predicted but never in the ground truth has IoU 0
  and does count.
- ``aAcc`` = correct pixels / valid (non-ignored) pixels.

Everything is computed from one ``(C, C)`` pixel confusion matrix (rows: ground truth, columns:
prediction) updated image by image with a single ``bincount``; no one-hot ``C x H x W`` tensor is
ever built, so memory is bounded by ``C * C`` plus one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SegmentationMetrics",
    "ClassMatcher",
    "StreamingConfusionMatrix",
    "pixel_confusion_matrix",
    "reduce_zero_label",
    "resize_nearest",
    "segmentation_metrics",
]


def _check_integer(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(
            f"Expected `{name}` to hold integer class ids, but got dtype {tensor.dtype}"
        )


def reduce_zero_label(gt: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Maps raw ADE20K-style ground truth to training ids, as mmsegmentation does.

    0 becomes ``ignore_index``, ``ignore_index`` stays ``ignore_index`` and every other value ``v``
    becomes ``v - 1``.

    Args:
        gt: (...) integer ground-truth ids.
        ignore_index: the value marking pixels to ignore.

    Returns:
        (...) int64 ids.
    """
    _check_integer("gt", gt)
    gt = gt.long()
    out = gt - 1
    out[(gt == 0) | (gt == ignore_index)] = ignore_index
    return out


_reduce_zero_label = reduce_zero_label  # the argument of the same name shadows it below


def pixel_confusion_matrix(
    pred: torch.Tensor,
    gt: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
) -> torch.Tensor:
    """Counts (ground truth, prediction) pixel pairs of one image with a single ``bincount``.

    Args:
        pred: (H, W) (or any shape equal to ``gt``'s) integer predicted class ids in
            ``[0, num_classes)``.
        gt: same shape as ``pred``, integer ground-truth ids in ``[0, num_classes)`` or
            ``ignore_index``.
        num_classes: C, the number of classes.
        ignore_index: ground-truth value whose pixels are excluded.
        reduce_zero_label: apply :func:`reduce_zero_label` to ``gt`` first.

    Returns:
        (C, C) int64 on ``gt``'s device; entry ``[i, j]`` counts pixels with ground truth ``i``
        predicted ``j``.

    Raises:
        ValueError: on mismatched shapes, non-integer dtypes or ids outside ``[0, num_classes)``.
    """
    _check_integer("pred", pred)
    _check_integer("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"Expected `pred` to have the shape of `gt` {tuple(gt.shape)}, but got {tuple(pred.shape)}"
        )
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"Expected `num_classes` to be an int >= 0, but got {num_classes!r}")
    gt = _reduce_zero_label(gt, ignore_index) if reduce_zero_label else gt.long()
    valid = gt != ignore_index
    gt_valid = gt[valid]
    pred_valid = pred.to(gt.device).long()[valid]
    for name, values in (("gt", gt_valid), ("pred", pred_valid)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"Expected `{name}` ids (ignored pixels aside) in [0, {num_classes}), but got ids "
                f"from {int(values.min())} to {int(values.max())}"
            )
    counts = torch.bincount(
        gt_valid * num_classes + pred_valid, minlength=num_classes * num_classes
    )
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of one confusion matrix (see the module docstring for the definition).

    Attributes:
        intersection: (C,) int64, pixels of class c predicted c.
        union: (C,) int64, pixels with ground truth c or prediction c.
        gt_area: (C,) int64, ground-truth pixels of class c.
        pred_area: (C,) int64, predicted pixels of class c (valid pixels only).
        iou: (C,) float64, ``intersection / union``; NaN where ``union == 0``.
        accuracy: (C,) float64, ``intersection / gt_area``; NaN where ``gt_area == 0``.
        miou: NaN-mean of ``iou`` (NaN when every class is absent).
        macc: NaN-mean of ``accuracy``.
        aacc: correct pixels / valid pixels (NaN without valid pixels).
    """

    intersection: torch.Tensor
    union: torch.Tensor
    gt_area: torch.Tensor
    pred_area: torch.Tensor
    iou: torch.Tensor
    accuracy: torch.Tensor
    miou: float
    macc: float
    aacc: float


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num = num.double()
    den = den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def _nanmean(values: torch.Tensor) -> float:
    if values.numel() == 0 or bool(torch.isnan(values).all()):
        return float("nan")
    return float(torch.nanmean(values))


def segmentation_metrics(
    confusion: torch.Tensor, unscored: Sequence[int] = ()
) -> SegmentationMetrics:
    """Computes per-class IoU and accuracy, mIoU, mAcc and aAcc from a pixel confusion matrix.

    Args:
        confusion: (C, C) integer counts, rows ground truth, columns prediction.
        unscored: indices of columns that mean "no class" (a prediction of ``ignore_index``, as
            mmsegmentation drops predicted ids outside its classes): their pixels stay misses of
            their ground-truth class, but their IoU and accuracy are NaN and count in no mean.

    Returns:
        The :class:`SegmentationMetrics` (tensors on ``confusion``'s device).
    """
    if not isinstance(confusion, torch.Tensor) or confusion.ndim != 2:
        raise ValueError(f"Expected `confusion` to be a (C, C) tensor, but got {confusion!r}")
    if confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"Expected `confusion` to be square, but got {tuple(confusion.shape)}")
    confusion = confusion.long()
    intersection = confusion.diagonal()
    gt_area = confusion.sum(dim=1)
    pred_area = confusion.sum(dim=0)
    union = gt_area + pred_area - intersection
    iou = _ratio(intersection, union)
    accuracy = _ratio(intersection, gt_area)
    unscored = [int(k) for k in unscored]
    if unscored:
        iou[unscored] = float("nan")
        accuracy[unscored] = float("nan")
    total = gt_area.sum()
    aacc = float(intersection.sum().double() / total.double()) if int(total) > 0 else float("nan")
    return SegmentationMetrics(
        intersection=intersection,
        union=union,
        gt_area=gt_area,
        pred_area=pred_area,
        iou=iou,
        accuracy=accuracy,
        miou=_nanmean(iou),
        macc=_nanmean(accuracy),
        aacc=aacc,
    )


class StreamingConfusionMatrix:
    """A running (C, C) pixel confusion matrix, updated one image at a time.

    The number of classes can grow between updates (:meth:`grow`), for collections whose classes
    are discovered while iterating.

    Args:
        num_classes: C at the start.
        ignore_index: ground-truth value whose pixels are excluded.
        reduce_zero_label: apply :func:`reduce_zero_label` to every ground truth.
        device: where the matrix lives (default CPU).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"Expected `num_classes` to be an int >= 0, but got {num_classes!r}")
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    @property
    def num_classes(self) -> int:
        return self.matrix.shape[0]

    def grow(self, num_classes: int) -> None:
        """Enlarges the matrix to ``num_classes`` classes (new rows and columns are zero)."""
        if num_classes < self.num_classes:
            raise ValueError(
                f"Expected `num_classes` >= {self.num_classes} (classes cannot be removed), "
                f"but got {num_classes}"
            )
        if num_classes == self.num_classes:
            return
        grown = self.matrix.new_zeros(num_classes, num_classes)
        grown[: self.num_classes, : self.num_classes] = self.matrix
        self.matrix = grown

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Adds one image.

        Args:
            pred: (H, W) integer predicted ids in ``[0, C)``.
            gt: (H, W) integer ground-truth ids in ``[0, C)`` or ``ignore_index``.

        Returns:
            (C, C) int64, this image's own confusion matrix.
        """
        image = pixel_confusion_matrix(
            pred.to(self.matrix.device),
            gt.to(self.matrix.device),
            self.num_classes,
            ignore_index=self.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
        )
        self.matrix += image
        return image

    def compute(self) -> SegmentationMetrics:
        """The metrics of everything added so far."""
        return segmentation_metrics(self.matrix)


def resize_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an id map with exact integer indexing (ids never blend).

    Output pixel ``(i, j)`` takes input pixel ``(floor(i * H / h), floor(j * W / w))``, the rule of
    ``torch.nn.functional.interpolate(mode="nearest")`` computed without floating point.

    Args:
        mask: (H, W) integer ids.
        size: (h, w), the output size.

    Returns:
        (h, w) with ``mask``'s dtype and device.
    """
    if mask.ndim != 2:
        raise ValueError(f"Expected `mask` to be (H, W), but got shape {tuple(mask.shape)}")
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"Expected `size` to be two positive ints, but got {size!r}")
    height, width = mask.shape
    rows = torch.arange(h, device=mask.device) * height // h
    cols = torch.arange(w, device=mask.device) * width // w
    return mask[rows[:, None], cols[None, :]]


class ClassMatcher:
    """Maps the ids of two id maps (ground truth, prediction) to shared class indices BY NAME.

    Each side names its ids through its own targets (``{id: name}``); equal names share one class
    index. Classes are numbered as they are met: first the ground truth's declared names (by id),
    then the prediction's other declared names (by id), then, while ids are looked up, values a
    side does not name, as classes named after the value (``"7"``; an unnamed 7 on both sides is
    one class). With no targets on either side, every class is such a value, so ids match
    directly. :meth:`final_order` sorts the value-named classes numerically.

    Lookups go through a per-side table indexed by id (grown on demand), so mapping an image costs
    one gather.

    Args:
        gt_targets: ground-truth ``{id: name}``, or None.
        pred_targets: prediction ``{id: name}``, or None.
        max_id: the largest id accepted (bounds the lookup tables).
    """

    def __init__(
        self,
        gt_targets: dict[int, str] | None,
        pred_targets: dict[int, str] | None,
        max_id: int = 2**24,
    ) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._declared = 0
        self._max_id = max_id
        self._targets = {"gt": dict(gt_targets or {}), "pred": dict(pred_targets or {})}
        self._tables = {side: torch.full((0,), -1, dtype=torch.long) for side in self._targets}
        self._unnamed: dict[str, set[int]] = {side: set() for side in self._targets}
        for side in ("gt", "pred"):
            for _, name in sorted(self._targets[side].items()):
                self._class_index(str(name))
        self._declared = len(self.names)
        gt_names = {str(n) for n in self._targets["gt"].values()}
        pred_names = {str(n) for n in self._targets["pred"].values()}
        both = bool(gt_names) and bool(pred_names)
        self.unmatched_gt = [
            n for n in self.names if both and n in gt_names and n not in pred_names
        ]
        self.unmatched_pred = [
            n for n in self.names if both and n in pred_names and n not in gt_names
        ]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    @property
    def unnamed_gt_values(self) -> list[int]:
        """Ground-truth values met that the ground-truth targets do not name (if it has any)."""
        return sorted(self._unnamed["gt"]) if self._targets["gt"] else []

    @property
    def unnamed_pred_values(self) -> list[int]:
        """Predicted values met that the prediction targets do not name (if it has any)."""
        return sorted(self._unnamed["pred"]) if self._targets["pred"] else []

    def gt_classes(self, ids: torch.Tensor) -> torch.Tensor:
        """Class indices of ground-truth ids: (...) int ids >= 0 -> (...) int64 indices."""
        return self._lookup("gt", ids)

    def pred_classes(self, ids: torch.Tensor) -> torch.Tensor:
        """Class indices of predicted ids: (...) int ids >= 0 -> (...) int64 indices."""
        return self._lookup("pred", ids)

    def pred_class_of(self, value: int) -> int | None:
        """The class index a predicted id was mapped to, or None if it was never looked up."""
        table = self._tables["pred"]
        index = int(table[value]) if 0 <= value < len(table) else -1
        return index if index >= 0 else None

    def declares_gt(self, name: str) -> bool:
        """Whether the ground truth's targets name the class ``name``."""
        return name in {str(n) for n in self._targets["gt"].values()}

    def final_order(self) -> list[int]:
        """Class indices in reporting order: declared names, then value-named classes by value."""
        declared = list(range(self._declared))
        rest = range(self._declared, len(self.names))
        return declared + sorted(rest, key=lambda k: int(self.names[k]))

    def _class_index(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]

    def _lookup(self, side: str, ids: torch.Tensor) -> torch.Tensor:
        _check_integer("ids", ids)
        ids = ids.long().cpu()
        if ids.numel() == 0:
            return ids
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high > self._max_id:
            raise ValueError(f"Expected ids in [0, {self._max_id}], but got {low} to {high}")
        table = self._tables[side]
        if high >= len(table):
            grown = torch.full((high + 1,), -1, dtype=torch.long)
            grown[: len(table)] = table
            table = self._tables[side] = grown
        classes = table[ids]
        if bool((classes < 0).any()):
            targets = self._targets[side]
            for value in torch.unique(ids[classes < 0]).tolist():
                name = targets.get(value)
                if name is None:
                    name = str(value)
                    self._unnamed[side].add(value)
                table[value] = self._class_index(str(name))
            classes = table[ids]
        return classes
