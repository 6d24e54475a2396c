# Sourced by scripts/ensure_env.sh and scripts/ensure_vllm_env.sh: check_native KIND ENV_DIR LOG
# runs scripts/check_native.py (every native import of the environment loads, with its own
# libraries; a failing package is reinstalled by pip once) when the environment has not passed
# this version of the check. Failures: one line each on stderr, and status 2.
check_native() {
  local kind="$1" env_dir="$2" log="$3" want out
  mkdir -p "$(dirname "$log")"
  want="$(sha256sum scripts/check_native.py | cut -c1-16)"
  [ "$(cat "$env_dir/.native-ok" 2>/dev/null)" = "$want" ] && return 0
  if out="$("$env_dir/bin/python" scripts/check_native.py "$kind" --repair "$log" 2>>"$log")"; then
    echo "$want" > "$env_dir/.native-ok"
    return 0
  fi
  grep '^error: ' <<< "$out" >&2 || echo "error: the $kind environment's native-library check failed; full log: $log" >&2
  return 2
}
