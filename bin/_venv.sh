# Sourced by bin/serve, bin/test and .ci/run: makes sure .venv exists and holds exactly
# what requirements.lock pins, then puts it first on PATH. Re-installs only when the
# lock file changes.
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)." >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV ..."
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing pinned dependencies into $VENV ..."
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.lock
    echo "$want" > "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
