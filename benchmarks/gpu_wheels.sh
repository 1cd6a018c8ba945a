#!/usr/bin/env bash
# Downloads, as wheels, the packages the GPU benchmarks and the `gpu` tests need beyond a stock
# PyTorch GPU image (torch, torchvision, transformers, timm, numpy, pillow, scipy, hypothesis,
# pytest), for a GPU machine that cannot reach a package registry. Versions are the ones installed
# in this checkout's virtual environment, so the GPU machine runs what CI tests.
#
# Usage (repository root, after `make setup`):
#   bash benchmarks/gpu_wheels.sh [DEST] [PYTHON_VERSION]      # defaults: .whl 3.12
#   SSA_GPU_WHEELS_EXTRA="transformers" bash benchmarks/gpu_wheels.sh   # also carry these
# Then, on the GPU machine: bash benchmarks/gpu_suite.sh OUTDIR (it installs DEST's wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-.whl}
python_version=${2:-3.12}
PY=${SSA_VENV:-.venv}/bin/python
[ -x "$PY" ] || { echo "no virtual environment at ${SSA_VENV:-.venv}: run 'make setup' first" >&2; exit 1; }

# segment-anything and pycocotools (SAM, RLE), open_clip (CLIP filter), spaCy (noun chunks) with
# everything spaCy needs that a PyTorch image lacks.
names=(
    segment-anything pycocotools open_clip_torch ftfy wcwidth
    spacy spacy-legacy spacy-loggers murmurhash cymem preshed thinc blis wasabi srsly catalogue
    weasel confection cloudpathlib smart_open pydantic pydantic_core annotated-types
    typing-inspection
)
# shellcheck disable=SC2206
names+=(${SSA_GPU_WHEELS_EXTRA:-})

mapfile -t specs < <("$PY" - "${names[@]}" <<'EOF'
import importlib.metadata as metadata
import sys

for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed in the virtual environment: run 'make setup' first")
EOF
)

platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
    manylinux_2_31 manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done

mkdir -p "$dest"
"$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" "${platforms[@]}" -d "$dest" "${specs[@]}"
echo "wheels for CPython $python_version in $dest: $(du -sh "$dest" | cut -f1)"
