#!/usr/bin/env bash
# Build (or reuse) llama.cpp's own programs and link them at .llamacpp (bin/llama-server,
# bin/llama-quantize).
#
# llama.cpp comes from the package index as the llama-cpp-python sdist (constraints/llamacpp.txt:
# version and sha256), which vendors llama.cpp's sources; its server and quantizer are built from
# them with cmake (no Python bindings: paritybench talks to llama-server over HTTP), with one patch
# to the server (scripts/llamacpp/patch_server.py: a token ending inside a UTF-8 character keeps its
# log-probs and streamed id; nothing computed changes). The build is
# native (-DGGML_NATIVE=ON: the kernels of this CPU), so the cache key holds the CPU's instruction
# sets besides the lock and this script: an AVX2-only machine and an AVX-512 one build their own.
#
#   PARITYBENCH_LLAMACPP_ENV   use this folder (built there when empty)
#   PARITYBENCH_ENV_CACHE      where environments are kept (default ~/.cache/paritybench/envs)
#   PARITYBENCH_BUILD_JOBS     parallel compile jobs (default: the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
LOCK=constraints/llamacpp.txt
RECIPE=3   # bump when the build steps below change: it is part of the cache key
CACHE="${PARITYBENCH_ENV_CACHE:-$HOME/.cache/paritybench/envs}"
ISA="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512[a-z_0-9]*|amx[a-z_0-9]*|fma|f16c|avx_vnni)$' | sort | tr '\n' ' ')"
KEY="$( (cat "$LOCK"; echo "$RECIPE $ISA") | sha256sum | cut -c1-16)"
if [ -n "${PARITYBENCH_LLAMACPP_ENV:-}" ]; then
  ENV_DIR="$PARITYBENCH_LLAMACPP_ENV"
  LINK=""
else
  ENV_DIR="$CACHE/llamacpp-$KEY"
  LINK=.llamacpp
fi
fail() { echo "error: $1" >&2; exit 2; }

if [ ! -f "$ENV_DIR/.complete" ]; then
  for tool in cmake gcc g++; do
    command -v "$tool" >/dev/null || fail "building llama.cpp needs $tool, which is not on PATH; install it (apt-get install cmake build-essential)"
  done
  version="$(awk -F'==' '/^llama-cpp-python==/ {print $2}' "$LOCK" | awk '{print $1}')"
  sha="$(grep -o 'sha256:[0-9a-f]*' "$LOCK" | head -1 | cut -d: -f2)"
  [ -n "$version" ] && [ -n "$sha" ] || fail "$LOCK names no llama-cpp-python==VERSION --hash=sha256:HEX"
  echo "[paritybench] building llama.cpp (llama-cpp-python $version's sources) in $ENV_DIR (first time: several minutes)"
  rm -rf "$ENV_DIR"
  mkdir -p "$ENV_DIR/src" "$ENV_DIR/bin"
  LOG="$ENV_DIR/build.log"
  start=$(date +%s)
  command -v "$PYTHON" >/dev/null || fail "$PYTHON not found; set PYTHON=/path/to/python3.11"
  "$PYTHON" -m venv "$ENV_DIR/pip" >"$LOG" 2>&1 || fail "$PYTHON cannot make a virtual environment; see $LOG"
  "$ENV_DIR/pip/bin/pip" download --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python==$version" \
    -d "$ENV_DIR/src" >>"$LOG" 2>&1 || fail "cannot download llama-cpp-python==$version from the package index; see $LOG"
  archive="$(ls "$ENV_DIR"/src/llama_cpp_python-*.tar.gz)"
  echo "$sha  $archive" | sha256sum -c --quiet - >>"$LOG" 2>&1 \
    || fail "$archive does not have the sha256 $LOCK names; the index served another file"
  tar xzf "$archive" -C "$ENV_DIR/src"
  sources="$(ls -d "$ENV_DIR"/src/llama_cpp_python-*/vendor/llama.cpp)"
  "$PYTHON" scripts/llamacpp/patch_server.py "$sources" >>"$LOG" 2>&1 || fail "$(tail -1 "$LOG")"
  # no AMX: a CPU may list amx_tile while its kernel or hypervisor does not grant the tile state, and
  # llama.cpp's AMX kernels (quantized matrices) then die with SIGILL at the first Q8_0 or Q4 matmul
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$sources" -B "$ENV_DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >>"$LOG" 2>&1 || fail "cmake could not configure llama.cpp; see $LOG"
  cmake --build "$ENV_DIR/build" --target llama-server llama-quantize -j "${PARITYBENCH_BUILD_JOBS:-$(nproc)}" >>"$LOG" 2>&1 \
    || fail "llama.cpp did not compile: $(grep -m1 -E 'error|Error' "$LOG" || tail -1 "$LOG"); see $LOG"
  cp "$ENV_DIR/build/bin/llama-server" "$ENV_DIR/build/bin/llama-quantize" "$ENV_DIR/bin/"
  rm -rf "$ENV_DIR/build" "$ENV_DIR/pip" "$ENV_DIR/src"/llama_cpp_python-*/  # the programs are linked statically
  echo "llama-cpp-python $version; native build for: $ISA" > "$ENV_DIR/.complete"
  echo "[paritybench] llama.cpp built in $(( $(date +%s) - start )) s"
fi
if [ -n "$LINK" ]; then
  ln -sfn "$ENV_DIR" "$LINK"
fi
