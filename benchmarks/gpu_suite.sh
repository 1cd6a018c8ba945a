#!/usr/bin/env bash
# Runs the `gpu` tests and the GPU benchmarks of issue 8 on a CUDA machine and keeps every table.
#
# Usage (repository root of the GPU machine):
#   bash benchmarks/gpu_suite.sh OUTDIR [STEP ...]
# STEPs (default: all, in this order):
#   tests    pytest -m gpu over the test files that hold gpu tests (no FiftyOne needed)
#   decoder  SAM's mask decoder: ours vs segment-anything's, fp32 and bf16
#   decoder2 SAM 2's mask decoder: ours vs transformers' Sam2MaskDecoder, fp32 and bf16
#   blip     BLIP-large's vision encoder, transformers' eager attention vs ours through SDPA
#   sam      automatic mask generation at the original's settings (ViT-H), ours vs segment-anything's
#   voting   voting and painting at SA-1B size, ours vs the reference loop
#   run      every stage at the original preset, SSA-engine with the default models, vs the reference
#   deciders SSA-engine's deciders on the same masks: SAM 3 vs CLIPSeg (real sizes, random weights)
# Each STEP writes OUTDIR/STEP.log (its whole output) and, for benchmarks, OUTDIR/STEP.md (tables).
# Wheels in $SSA_WHEELS (default .whl; made by benchmarks/gpu_wheels.sh) are installed first into
# /tmp/ssa-site, for machines without the engine's packages; the machine's own packages stay.
# SSA_STEP_TIMEOUT (seconds) bounds each step; SSA_DEVICE (default cuda) picks the benchmarks'
# device (cpu: a smoke run of this script). Exits non-zero when a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_suite.sh OUTDIR [tests|decoder|decoder2|blip|sam|voting|run|deciders ...]" >&2; exit 2; }
out=$1
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests decoder decoder2 blip sam voting run deciders)
for step in "${steps[@]}"; do
    case $step in tests | decoder | decoder2 | blip | sam | voting | run | deciders) ;;
    *) echo "unknown step '$step': choose from tests decoder decoder2 blip sam voting run deciders" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
PY=${PYTHON:-python3}
device=${SSA_DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

wheels=${SSA_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ssa-site "$wheels"/*.whl || { echo "installing $wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/ssa-site${PYTHONPATH:+:$PYTHONPATH}
fi

"$PY" - <<'EOF' | tee "$out/environment.txt"
import platform

import torch
import transformers

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE"
print(f"{gpu}; python {platform.python_version()}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF

gpu_test_files=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
limit=${SSA_STEP_TIMEOUT:+timeout $SSA_STEP_TIMEOUT}
failed=()
for step in "${steps[@]}"; do
    md="$out/$step.md"
    case $step in
    tests) cmd=("$PY" -m pytest -q -m gpu -p no:cacheprovider $gpu_test_files) ;;
    decoder) cmd=("$PY" -m benchmarks.bench_decoder --device "$device" --variants fp32,bf16 --markdown "$md") ;;
    decoder2) cmd=("$PY" -m benchmarks.bench_decoder --family sam2 --device "$device" --variants fp32,bf16 --markdown "$md") ;;
    blip) cmd=("$PY" -m benchmarks.bench_blip_attention --model blip-large --device "$device"
        --crops 64 --repeats 3 --markdown "$md") ;;
    sam) cmd=("$PY" -m benchmarks.bench_sam original --device "$device" --variants fp32,bf16 --stages --markdown "$md") ;;
    voting) cmd=("$PY" -m benchmarks.bench_voting --device "$device") ;;
    run) cmd=("$PY" -m benchmarks.run --preset original --device "$device"
        --stages decode,sam,semantic,voting,engine --markdown "$md") ;;
    deciders) cmd=("$PY" -m benchmarks.bench_deciders --device "$device" --masks 64 --repeats 2
        --markdown "$md") ;;
    esac
    echo "== $step: ${cmd[*]}"
    start=$SECONDS
    # shellcheck disable=SC2086
    $limit "${cmd[@]}" 2>&1 | tee "$out/$step.log"
    rc=${PIPESTATUS[0]}
    echo "== $step: exit $rc after $((SECONDS - start)) s"
    [ "$step" = voting ] && cp "$out/$step.log" "$md"
    [ "$rc" -eq 0 ] || failed+=("$step")
done
[ ${#failed[@]} -eq 0 ] || { echo "failed steps: ${failed[*]}" >&2; exit 1; }
