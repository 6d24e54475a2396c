#!/usr/bin/env bash
# Create (or reuse) the harness environment and link it at .venv.
#
# The environment is several GB, so it lives in a cache outside the clone, keyed by the hash of
# the lock file and pyproject.toml: a fresh machine builds it from nothing (about 5 minutes), a
# second clone or a CI run on the same machine reuses it. The project itself is installed
# editable into it on every call (a second or two), so the env always points at this clone.
#
#   PARITYBENCH_ENV_CACHE   where environments are kept (default ~/.cache/paritybench/envs)
#   PYTHON                  interpreter to build from (default python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3.11}"
CACHE="${PARITYBENCH_ENV_CACHE:-$HOME/.cache/paritybench/envs}"
KEY="$(cat constraints/harness.txt pyproject.toml | sha256sum | cut -c1-16)"
ENV_DIR="$CACHE/harness-py311-$KEY"

if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found; paritybench needs Python 3.11 (gemma 3.3 is the newest gemma for it). Set PYTHON=/path/to/python3.11." >&2
  exit 2
fi

if [ ! -f "$ENV_DIR/.complete" ]; then
  echo "[paritybench] building the harness environment in $ENV_DIR (first time: about 5 minutes)"
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  start=$(date +%s)
  "$PYTHON" -m venv "$ENV_DIR"
  if ! "$ENV_DIR/bin/pip" install --disable-pip-version-check -c constraints/harness.txt \
      "setuptools>=61" -e ".[test]" > "$CACHE/pip-harness-$KEY.log" 2>&1; then
    grep -v "^WARNING: Location" "$CACHE/pip-harness-$KEY.log" | tail -20 >&2
    echo "error: installing the harness environment failed; full log: $CACHE/pip-harness-$KEY.log" >&2
    exit 2
  fi
  "$ENV_DIR/bin/python" -c "import gemma, jax, torch, transformers, harness" \
      || { echo "error: the harness environment in $ENV_DIR is broken (see pip output above)" >&2; exit 2; }
  "$ENV_DIR/bin/pip" freeze --exclude-editable > "$ENV_DIR/installed.txt"
  echo "$(( $(date +%s) - start ))" > "$ENV_DIR/.build_seconds"
  touch "$ENV_DIR/.complete"
  echo "[paritybench] environment ready in $(cat "$ENV_DIR/.build_seconds")s, $(du -sh "$ENV_DIR" | cut -f1)"
fi

# .venv -> the cached environment (replace a stale link, never a real directory someone made).
if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$ENV_DIR" .venv
elif [ "$(readlink -f .venv)" != "$(readlink -f "$ENV_DIR")" ]; then
  echo "error: .venv exists and is not paritybench's environment link; move it away and rerun" >&2
  exit 2
fi

# Point the editable install at this clone (another clone may have claimed the shared env).
here="$(.venv/bin/python -c 'import harness, os; print(os.path.dirname(os.path.dirname(os.path.abspath(harness.__file__))))' 2>/dev/null || true)"
if [ "$here" != "$ROOT" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . > /dev/null 2>&1 \
    || { echo "error: editable install of paritybench into .venv failed" >&2; exit 2; }
fi
