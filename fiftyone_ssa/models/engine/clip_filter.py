"""CLIP (open_clip) ranking of each mask's candidate names on its crop: the top-k proposals.

Image embeddings of all crops are computed in batches; text embeddings once per distinct
candidate string and cached; each mask's scores are a softmax of ``logit_scale * cosine`` (100
for OpenAI's CLIP) over its own candidates only. Ties keep the candidates' order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fiftyone_ssa.core.crops import CropTransform
from fiftyone_ssa.models import weights
from fiftyone_ssa.models.semantic.branches import default_device

# Beyond this many cached text embeddings the cache starts over (bounds device memory).
MAX_CACHED_TEXTS = 200_000


def _state_dict(checkpoint: Path) -> dict:
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and format errors of every kind
        raise ValueError(f"cannot read CLIP checkpoint {checkpoint}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"CLIP checkpoint {checkpoint} holds no state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


@contextlib.contextmanager
def _root_logger_kept():
    """Removes the handlers a block (or decorated function) adds to the root logger.

    open_clip logs with ``logging.info``/``logging.warning``, which give a root logger without
    handlers a stderr handler for good; every INFO record of every library (FiftyOne's progress
    bars among them) was then printed a second time.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


@_root_logger_kept()
def load_open_clip(
    source: str | os.PathLike, architecture: str | None = None
) -> tuple[torch.nn.Module, object, str]:
    """An open_clip model and tokenizer from a preset, a directory, a checkpoint or an id.

    Args:
        source: a ``clip-*`` preset; a directory with ``open_clip_config.json`` and its weights
            (the Hugging Face hub layout); a checkpoint file (with ``architecture``); or a Hugging
            Face id fetched with ``fiftyone-ssa models download``.
        architecture: the open_clip model name of a checkpoint file (``ViT-L-14``,
            ``ViT-B-32-quickgelu``, ...).

    Returns:
        ``(model, tokenizer, name)``, the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: a preset or id whose weights are not in the models directory.
        ValueError: files that are not an open_clip model.
    """
    import open_clip

    name = os.fspath(source)
    preset = weights.PRESETS.get(name)
    path = Path(name).expanduser()
    quick_gelu = False
    if preset is not None and preset.kind == "open_clip":
        checkpoint = weights.resolve(name)
        architecture = architecture or preset.architecture
        # OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain configs use GELU.
        quick_gelu = preset.source.endswith(".openai")
    elif path.is_dir() or (not path.exists() and weights.looks_like_hf_id(name)):
        directory = path if path.is_dir() else weights.resolve(name)
        if not (directory / "open_clip_config.json").is_file():
            raise ValueError(f"{directory} has no open_clip_config.json: not an open_clip model")
        model_name = f"local-dir:{directory}"
        try:
            model = open_clip.create_model(model_name)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"cannot load an open_clip model from {directory}: {err}") from None
        return model.eval(), open_clip.get_tokenizer(model_name), str(directory)
    elif path.is_file():
        checkpoint = path
        if not architecture:
            raise ValueError(
                f"Expected `architecture` (an open_clip model name such as ViT-L-14) for the "
                f"checkpoint file {path}, but got none"
            )
    else:
        valid = ", ".join(n for n, p in weights.PRESETS.items() if p.kind == "open_clip")
        raise ValueError(
            f"unknown CLIP model {name!r}: expected one of {valid}, a directory with "
            "open_clip_config.json, a checkpoint file or a Hugging Face id"
        )
    if architecture not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {architecture!r}")
    model = open_clip.create_model(architecture, pretrained=None, force_quick_gelu=quick_gelu)
    try:
        model.load_state_dict(_state_dict(checkpoint))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{checkpoint} does not fit {architecture}: {first}") from None
    return model.eval(), open_clip.get_tokenizer(architecture), name


def crop_transform_from_open_clip(model) -> CropTransform:
    """CLIP's preprocessing (shorter side to S, centre crop, normalise) as a CropTransform."""
    import open_clip

    config = open_clip.get_model_preprocess_cfg(model)
    size = config.get("size", model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)
    mode = config.get("interpolation", "bicubic")
    return CropTransform(
        size=(int(size[0]), int(size[1])),
        mode=mode if mode in ("bilinear", "bicubic") else "bicubic",
        mean=tuple(config.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(config.get("std", (0.26862954, 0.26130258, 0.27577711))),
        centre_square=config.get("resize_mode", "shortest") == "shortest",
    )


class ClipFilter:
    """Ranks candidate names per mask crop with CLIP and keeps the top-k.

    Args:
        source: see :func:`load_open_clip`.
        architecture: the open_clip model name for a checkpoint file.
        device: torch device; CUDA when available by default.
        half: float16 autocast on CUDA.
        batch_size: crops per image-encoder call (and texts per text-encoder call).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        architecture: str | None = None,
        device=None,
        half: bool = True,
        batch_size: int = 256,
    ):
        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be >= 1, but got {batch_size}")
        self.model, self.tokenizer, self.name = load_open_clip(source, architecture)
        self.device = torch.device(device) if device else default_device()
        self.model.to(self.device)
        self.half = half and self.device.type == "cuda"
        self.transform = crop_transform_from_open_clip(self.model)
        self.batch_size = batch_size
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self._text_cache: dict[str, torch.Tensor] = {}

    def _autocast(self):
        return torch.autocast(self.device.type, torch.float16, enabled=self.half)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, each distinct string encoded once per run.

        Args:
            texts: T strings.

        Returns:
            (T, D) float32 on the device.
        """
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if len(self._text_cache) + len(missing) > MAX_CACHED_TEXTS:
            self._text_cache.clear()
            missing = list(dict.fromkeys(texts))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            with self._autocast():
                features = self.model.encode_text(tokens).float()
            features = torch.nn.functional.normalize(features, dim=-1)
            self._text_cache.update(zip(chunk, features))
        if not texts:
            return torch.zeros((0, 0), device=self.device)
        return torch.stack([self._text_cache[t] for t in texts])

    @torch.no_grad()
    def image_embeddings(
        self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """L2-normalised embeddings of the crops of every box of every image.

        Args:
            images: B tensors (3, H_i, W_i) uint8 RGB, on the device.
            boxes: B tensors (N_i, 4) int64 ``[x0, y0, x1, y1]`` crop boxes, end-exclusive.

        Returns:
            (sum(N_i), D) float32.
        """
        chunks = []
        for pixels in self.transform.batches(images, boxes, self.batch_size):
            with self._autocast():
                features = self.model.encode_image(pixels.to(self.device)).float()
            chunks.append(torch.nn.functional.normalize(features, dim=-1))
        if not chunks:
            return torch.zeros((0, 0), device=self.device)
        return torch.cat(chunks)

    def rank(
        self, image_features: torch.Tensor, candidates: Sequence[Sequence[str]], top_k: int
    ) -> tuple[list[list[str]], list[list[float]]]:
        """The top-k candidates of each crop by CLIP probability over its own candidates.

        Args:
            image_features: (N, D) normalised crop embeddings.
            candidates: N non-empty lists of names.
            top_k: k >= 1; a crop keeps min(k, its number of candidates).

        Returns:
            ``(names, probabilities)``: N lists, best first.
        """
        if top_k < 1:
            raise ValueError(f"Expected `top_k` to be >= 1, but got {top_k}")
        n = image_features.shape[0]
        if len(candidates) != n:
            raise ValueError(
                f"Expected one candidate list per crop, but got {len(candidates)} for {n} crops"
            )
        if n == 0:
            return [], []
        if any(len(c) == 0 for c in candidates):
            raise ValueError("Expected at least one candidate name per crop, but got an empty list")
        vocabulary = list(dict.fromkeys(name for names in candidates for name in names))
        column = {name: i for i, name in enumerate(vocabulary)}
        text = self.text_embeddings(vocabulary)  # (U, D)
        width = max(len(c) for c in candidates)
        index = torch.zeros((n, width), dtype=torch.long)
        valid = torch.zeros((n, width), dtype=torch.bool)
        for i, names in enumerate(candidates):
            index[i, : len(names)] = torch.tensor([column[name] for name in names])
            valid[i, : len(names)] = True
        index, valid = index.to(self.device), valid.to(self.device)
        logits = self.logit_scale * (image_features.float() @ text.T)  # (N, U)
        logits = logits.gather(1, index).masked_fill(~valid, float("-inf"))
        probs = logits.softmax(dim=1)
        # A stable sort keeps the candidates' own order among equal scores.
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices
        k = min(top_k, width)
        top = order[:, :k].cpu().tolist()
        top_probs = probs.gather(1, order[:, :k]).cpu().tolist()
        names, scores = [], []
        for i, row in enumerate(top):
            keep = min(top_k, len(candidates[i]))
            names.append([candidates[i][j] for j in row[:keep]])
            scores.append(top_probs[i][:keep])
        return names, scores

    def top_k(
        self,
        images: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        candidates: Sequence[Sequence[str]],
        top_k: int = 3,
    ) -> tuple[list[list[str]], list[list[float]]]:
        """The top-k candidate names of every crop (see :meth:`rank`)."""
        return self.rank(self.image_embeddings(images, boxes), candidates, top_k)
