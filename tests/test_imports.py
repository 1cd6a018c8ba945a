"""Import hygiene: the package and its core stay light."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import fiftyone_ssa",
        "import fiftyone_ssa.core.voting, fiftyone_ssa.core.upsample, fiftyone_ssa.core.images, fiftyone_ssa.core.mask_set",
    ],
)
def test_core_imports_neither_fiftyone_nor_model_libraries(statement):
    loaded = _loaded_after(statement)
    for heavy in ("fiftyone", "transformers", "segment_anything", "open_clip", "spacy"):
        assert heavy not in loaded, f"{statement} imported {heavy}"


def test_registry_does_not_load_models_or_the_app_server():
    loaded = _loaded_after("import fiftyone_ssa; fiftyone_ssa.list_branches()")
    assert "transformers" not in loaded
    assert not any(m.startswith("fiftyone.server") for m in loaded)
