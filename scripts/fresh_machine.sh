#!/usr/bin/env bash
# The README's two commands as on a new machine of this kind, on this one: what an earlier session
# installed or cached cannot help them (issue 30: chromium had brought libsndfile1, which hid an
# environment that could not load soundfile from every run before).
#
#   sudo scripts/fresh_machine.sh [WORK]      # WORK: default /tmp/paritybench-fresh (emptied)
#
# What it does, in order (it changes the machine: run it on a development machine, never in CI):
#   1. removes Debian's chromium, if installed, and what it brought (apt-get autoremove: libpulse0,
#      libsndfile1, ...; `make test` installs them again, as on a new machine), and libsndfile1 with
#      `dpkg --remove --force-depends` if something else still holds it;
#   2. clones this repository's HEAD into WORK/clone;
#   3. runs `make demo`, then `make test`, in that clone with everything cached somewhere new and
#      empty: HOME=WORK/home (so ~/.cache/paritybench, uv's and pip's caches, Hugging Face's,
#      inductor's and vLLM's), PARITYBENCH_ENV_CACHE and PARITYBENCH_CACHE under it, pip's cache off;
#   4. checks that no libsndfile was on the system while `make demo` ran, and writes the times and
#      exit codes to WORK/summary.txt (the logs beside it).
# The machine's Python (pyenv, PYENV_ROOT) and pip configuration (/etc and the user's: the package
# indexes) are what a new machine has too, and are kept.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
WORK="${1:-/tmp/paritybench-fresh}"
if [ -n "${CI:-}" ]; then echo "error: scripts/fresh_machine.sh removes system packages; not in CI" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "error: run as root (it removes chromium and libsndfile1 with apt/dpkg)" >&2; exit 2; fi

rm -rf "$WORK" && mkdir -p "$WORK/home"
SUMMARY="$WORK/summary.txt"
say() { echo "[fresh] $*" | tee -a "$SUMMARY"; }

say "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
say "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_tile)$' | xargs)"
export DEBIAN_FRONTEND=noninteractive
# a state an earlier forced removal left (libpulse0 without libsndfile1) is repaired first: apt
# refuses to install anything (chromium, in make test) while a dependency is missing
apt-get install -f -y -qq > "$WORK/apt-remove.log" 2>&1
if dpkg -s chromium >/dev/null 2>&1; then
  say "removing chromium and what it brought (libpulse0, libsndfile1, ...): make test installs them again"
  apt-get remove -y -qq chromium >> "$WORK/apt-remove.log" 2>&1
fi
apt-get autoremove -y -qq >> "$WORK/apt-remove.log" 2>&1
if dpkg -s libsndfile1 >/dev/null 2>&1; then  # something installed by hand needs it: removed anyway
  say "removing libsndfile1 (dpkg --remove --force-depends; apt's dependencies stay broken until make test's apt-get)"
  dpkg --remove --force-depends libsndfile1 >> "$WORK/apt-remove.log" 2>&1
fi
say "libsndfile on the system before make demo: $(ldconfig -p | grep -c libsndfile) (0: none)"

git clone -q "$REPO" "$WORK/clone" && git -C "$WORK/clone" log --oneline -1 | sed 's/^/[fresh] commit /' | tee -a "$SUMMARY"
# pip's user configuration (on this kind of machine ~/.config/pip/pip.conf lists the extra package
# indexes, where soundfile is offered as two wheels) is part of a new machine: it comes along
for conf in .config/pip/pip.conf .pip/pip.conf; do
  if [ -f "$HOME/$conf" ]; then mkdir -p "$(dirname "$WORK/home/$conf")" && cp "$HOME/$conf" "$WORK/home/$conf"; fi
done
export HOME="$WORK/home" PARITYBENCH_ENV_CACHE="$WORK/home/.cache/paritybench/envs"
export PARITYBENCH_CACHE="$WORK/home/.cache/paritybench" PIP_NO_CACHE_DIR=1 UV_CACHE_DIR="$WORK/home/.cache/uv"
cd "$WORK/clone"

start=$(date +%s)
make demo > "$WORK/demo.log" 2>&1; demo=$?
say "make demo: exit $demo in $(( $(date +%s) - start )) s (log: $WORK/demo.log)"
say "libsndfile on the system after make demo: $(ldconfig -p | grep -c libsndfile)"
say "pip's indexes: $(pip config list 2>/dev/null | grep -c index-url) index-url settings; what the native check repaired:"
grep -h '^check_native' "$PARITYBENCH_ENV_CACHE"/pip-*.log | cut -c1-200 | sed 's/^/[fresh]   /' | tee -a "$SUMMARY"

start=$(date +%s)
CI=true make test > "$WORK/test.log" 2>&1; test=$?
say "make test: exit $test in $(( $(date +%s) - start )) s (log: $WORK/test.log)"
say "pytest: $(grep -E '^=+ .*(passed|failed).* in ' "$WORK/test.log" | tail -1)"
say "libsndfile on the system after make test (chromium brings it): $(ldconfig -p | grep -c libsndfile)"
[ "$demo" = 0 ] && [ "$test" = 0 ]
