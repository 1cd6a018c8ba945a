"""The branch registry: names -> factories, for semantic and mask branches.

``create_branch(name)`` accepts a registered name (a preset), a local directory or checkpoint, a Hugging Face id (its weights fetched
beforehand with ``fiftyone-ssa models download``), a branch instance, or, for semantic branches,
any callable ``image -> (class map, id -> name)``. Unknown names raise ``ValueError`` listing
the valid ones. ``field:<name>`` specs (labels already on the samples) are read by the labelling
layer (:mod:`fiftyone_ssa.labelling.sources`), not built here.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fiftyone_ssa.models import weights
from fiftyone_ssa.models.masks.branches import (
    MaskBranch,
    load_mask_branch,
    load_sam_branch,
    load_transformers_sam_branch,
)
from fiftyone_ssa.models.semantic.branches import (
    CallableSemanticBranch,
    CLIPSegSemanticBranch,
    OneFormerSemanticBranch,
    SemanticBranch,
    TransformersSemanticBranch,
)
from fiftyone_ssa.models.semantic.sam3_concepts import Sam3ConceptSemanticBranch
from fiftyone_ssa.models.semantic.universal import EomtSemanticBranch, Mask2FormerSemanticBranch

KINDS = ("semantic", "mask")


@dataclass(frozen=True)
class BranchEntry:
    """A registered branch.

    Attributes:
        name: the registered name.
        kind: ``"semantic"`` or ``"mask"``.
        factory: called with keyword options (``device`` among them); returns the branch.
        description: one line for listings.
        weights: the preset whose weights the branch needs, if any.
    """

    name: str
    kind: str
    factory: Callable[..., Any]
    description: str = ""
    weights: str | None = None


_REGISTRY: dict[str, BranchEntry] = {}


def register_branch(
    name: str, *, kind: str = "semantic", description: str = "", weights: str | None = None
) -> Callable:
    """Decorator registering a branch factory under ``name``.

    Example::

        from fiftyone_ssa.models.semantic.branches import CallableSemanticBranch

        @register_branch("my-model", description="our street-scene model")
        def my_model(device=None, **kwargs):
            return CallableSemanticBranch(predict_fn, device=device)

    The registry lives in the process: ``create_branch`` / ``apply_ssa`` find the name once the
    decorated function is defined (the ``fiftyone-ssa`` command does not import user code).

    Args:
        name: the name users pass to ``create_branch`` / ``apply_ssa``.
        kind: ``"semantic"`` or ``"mask"``.
        description: one line, kept on the entry (``get_entry(name).description``).
        weights: the preset whose weights the factory needs, kept on the entry.
    """
    if kind not in KINDS:
        raise ValueError(f"Expected `kind` to be one of {KINDS}, but got {kind!r}")
    if not name or name.startswith("field:"):
        raise ValueError(f"Expected a branch name not starting with 'field:', but got {name!r}")

    def decorator(factory: Callable) -> Callable:
        _REGISTRY[name] = BranchEntry(name, kind, factory, description, weights)
        return factory

    return decorator


def list_branches(filter: str | None = None, kind: str | None = None) -> list[str]:
    """Names of the registered branches.

    Args:
        filter: an optional glob pattern, e.g. ``"segformer-*"``.
        kind: ``"semantic"`` or ``"mask"`` to list one kind only.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"Expected `kind` to be one of {KINDS}, but got {kind!r}")
    names = [n for n, e in _REGISTRY.items() if kind is None or e.kind == kind]
    if filter:
        names = fnmatch.filter(names, filter)
    return sorted(names)


def get_entry(name: str) -> BranchEntry | None:
    """The registry entry of ``name``, or None."""
    return _REGISTRY.get(name)


# Branches by config.json's model_type; any other transformers model runs as a per-pixel
# classifier (TransformersSemanticBranch).
_BRANCH_BY_MODEL_TYPE: dict[str, type[SemanticBranch]] = {
    "oneformer": OneFormerSemanticBranch,
    "mask2former": Mask2FormerSemanticBranch,
    "eomt": EomtSemanticBranch,
}

# Open-vocabulary branches, by model_type: their classes are the user's ``classes``.
_OPEN_VOCABULARY: dict[str, type[SemanticBranch]] = {
    "clipseg": CLIPSegSemanticBranch,
    "sam3": Sam3ConceptSemanticBranch,
    "sam3_video": Sam3ConceptSemanticBranch,  # facebook/sam3's config: the detector inside
}


def _semantic_from_dir(path: Path, **kwargs) -> SemanticBranch:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{path} has no config.json: not a transformers model saved with save_pretrained"
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type", "")
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt config {config_path}: {err}") from None
    if model_type in _OPEN_VOCABULARY:
        return _OPEN_VOCABULARY[model_type](path, kwargs.pop("classes", None), **kwargs)
    _refuse_classes(kwargs, f"{path.name} ({model_type or 'a transformers model'})")
    branch_cls = _BRANCH_BY_MODEL_TYPE.get(model_type, TransformersSemanticBranch)
    return branch_cls(path, **kwargs)


def _refuse_classes(kwargs: dict, branch: str) -> None:
    """ValueError when ``classes`` is given for a branch whose classes are its own."""
    if kwargs.pop("classes", None) is not None:
        raise ValueError(
            "`classes` (--classes) is only for open-vocabulary branches (CLIPSeg, SAM 3); "
            f"{branch} has its own classes"
        )


def _unknown(name: str, kind: str) -> ValueError:
    valid = ", ".join(list_branches(kind=kind))
    return ValueError(
        f"unknown {kind} branch {name!r}: expected one of {valid}, 'field:<name>', a local "
        "path or a Hugging Face id"
    )


def create_branch(name: Any, kind: str = "semantic", **kwargs) -> SemanticBranch | MaskBranch:
    """Builds a semantic or mask branch from a name, path, id, field, instance or callable.

    Args:
        name: see the module docstring.
        kind: ``"semantic"`` or ``"mask"``.
        **kwargs: branch options (``device``; ``classes`` for CLIPSeg and SAM 3; mask generator
            settings for SAM).

    Returns:
        The branch, its model loaded.

    Raises:
        ValueError: unknown name, or files that are not a model of the expected kind.
        FileNotFoundError: a known model whose weights are not in the models directory.
    """
    if kind not in KINDS:
        raise ValueError(f"Expected `kind` to be one of {KINDS}, but got {kind!r}")
    base = SemanticBranch if kind == "semantic" else MaskBranch
    if isinstance(name, base):
        return name
    if kind == "semantic" and callable(name) and not isinstance(name, str):
        _refuse_classes(kwargs, "a callable branch")
        return CallableSemanticBranch(name, device=kwargs.get("device"))
    if isinstance(name, os.PathLike):  # a pathlib.Path to a checkpoint or directory
        name = os.fspath(name)
        if not isinstance(name, str):
            name = os.fsdecode(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected a {kind} branch name, but got {name!r}")
    if name.startswith("field:"):
        raise ValueError(
            f"{name!r} reads labels already on the samples: pass it to apply_ssa / "
            "apply_ssa_engine, which read the field; create_branch builds models"
        )
    entry = _REGISTRY.get(name)
    if entry is not None:
        if entry.kind != kind:
            raise ValueError(f"{name!r} is a {entry.kind} branch, not a {kind} branch")
        return entry.factory(**kwargs)
    path = Path(name).expanduser()
    if path.exists():
        if kind == "mask":
            return load_mask_branch(path, **kwargs)
        return _semantic_from_dir(path, **kwargs)
    if weights.looks_like_hf_id(name):
        if kind == "semantic":
            return _semantic_from_dir(weights.resolve(name), **kwargs)
        if weights.is_present(name):  # a transformers SAM-family repository fetched earlier
            kwargs.setdefault("name", name)
            return load_mask_branch(weights.resolve(name), **kwargs)
    if _looks_like_path(name):
        if kind == "mask":
            from fiftyone_ssa.models.masks.sam_loader import missing_checkpoint_message

            raise FileNotFoundError(missing_checkpoint_message(path))
        raise FileNotFoundError(
            f"missing semantic branch directory {path}: no such directory; pass a directory "
            "saved with save_pretrained, a preset (`fiftyone-ssa models list`) or a Hugging "
            "Face id"
        )
    raise _unknown(name, kind)


_PATH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _looks_like_path(name: str) -> bool:
    """Whether a branch name that matches nothing was meant as a file or directory."""
    return (
        "/" in name
        or "\\" in name
        or name.startswith((".", "~"))
        or name.lower().endswith(_PATH_SUFFIXES)
    )


def _register_presets() -> None:
    for preset in weights.PRESETS.values():
        if preset.task == "mask" and preset.kind == "hf":

            def transformers_sam_factory(_preset=preset, **kwargs):
                kwargs.setdefault("name", _preset.name)
                return load_transformers_sam_branch(weights.resolve(_preset.name), **kwargs)

            register_branch(
                preset.name, kind="mask", description=preset.description, weights=preset.name
            )(transformers_sam_factory)
        elif preset.task == "mask":

            def sam_factory(_preset=preset, **kwargs):
                kwargs.setdefault("model_type", _preset.architecture)
                kwargs.setdefault("name", _preset.name)
                return load_sam_branch(weights.resolve(_preset.name), **kwargs)

            register_branch(
                preset.name, kind="mask", description=preset.description, weights=preset.name
            )(sam_factory)
        elif preset.task == "semantic":

            def semantic_factory(_preset=preset, **kwargs):
                branch = _semantic_from_dir(weights.resolve(_preset.name), **kwargs)
                branch.name = _preset.name
                return branch

            register_branch(
                preset.name, kind="semantic", description=preset.description, weights=preset.name
            )(semantic_factory)


_register_presets()
