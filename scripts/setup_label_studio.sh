#!/usr/bin/env bash
# Label Studio for reviewing labels in an annotation tool (README: "In Label Studio").
#
# 1. The server, label-studio, in its own virtual environment .venv-label-studio/ (Django and
#    its other dependencies stay out of the project's .venv).
# 2. The client FiftyOne 1.22's Label Studio backend imports, label-studio-sdk with
#    `label_studio_sdk.Client` (1.0.x; 2.x dropped it), into the project's .venv. It is
#    installed without its dependencies, then those dependencies except opencv-python: the
#    project's .venv has opencv-python-headless, which provides the same `cv2` module, and
#    both in one environment overwrite each other's files. `pip check` then reports only
#    "label-studio-sdk requires opencv-python, which is not installed".
#
# Idempotent: each step is skipped when its packages are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SSA_VENV:-.venv}
LS_VENV=.venv-label-studio
LABEL_STUDIO=${SSA_LABEL_STUDIO_SPEC:-"label-studio==1.23.2"}
SDK="label-studio-sdk==1.0.20"
SDK_DEPS=(
    "appdirs>=1.4.3" "lxml>=4.2.5" "xmljson==0.2.1" "jsf>=0.11.2,<0.12.0" "ujson>=5.8.0"
    "ijson>=3.2.3" "pyjwt>=2.10.1,<3" "nltk>=3.9.1,<4" "requests-mock==1.12.1"
    "datamodel-code-generator==0.26.1"
)
export PIP_DISABLE_PIP_VERSION_CHECK=1
log() { printf '[setup-label-studio] %s\n' "$*" >&2; }

[ -x "$VENV/bin/python" ] || { log "FAILED: no $VENV: run scripts/setup.sh first"; exit 1; }

if [ ! -x "$LS_VENV/bin/label-studio" ]; then
    log "installing $LABEL_STUDIO into $LS_VENV (a few minutes)"
    "$PYTHON" -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip install -q "$LABEL_STUDIO" \
        || { log "FAILED: pip install $LABEL_STUDIO (pip must reach PyPI); remove $LS_VENV to retry"; exit 1; }
fi

if ! "$VENV/bin/python" -c 'import label_studio_sdk.converter.brush; from label_studio_sdk import Client' 2>/dev/null; then
    log "installing $SDK into $VENV (without opencv-python: opencv-python-headless provides cv2)"
    "$VENV/bin/python" -m pip install -q --no-deps "$SDK"
    "$VENV/bin/python" -m pip install -q "${SDK_DEPS[@]}"
    "$VENV/bin/python" -c 'import label_studio_sdk.converter.brush; from label_studio_sdk import Client'
fi
log "ready: $("$LS_VENV/bin/python" -c 'import label_studio; print("label-studio", label_studio.__version__)'), label-studio-sdk $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("label-studio-sdk"))')"
