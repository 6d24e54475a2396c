#!/usr/bin/env bash
# Debian's chromium, for the test that opens report.html in a headless browser
# (tests/test_report.py drives it with playwright; playwright's own browser download is not used).
# Installed once with apt; `make test` calls this.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "error: chromium is missing and installing it needs root: apt-get install chromium" >&2; exit 2; }
  SUDO="sudo"
fi
echo "[paritybench] installing Debian's chromium (for the report test)"
start=$(date +%s)
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } > /tmp/paritybench-apt-chromium.log 2>&1; then
  tail -20 /tmp/paritybench-apt-chromium.log >&2
  echo "error: apt-get install chromium failed; full log: /tmp/paritybench-apt-chromium.log" >&2
  exit 2
fi
echo "[paritybench] chromium installed in $(( $(date +%s) - start ))s: $(chromium --version 2>/dev/null)"
