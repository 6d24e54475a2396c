"""Install packages into a new virtual environment with uv, as pip would on this machine.

    python scripts/install_into.py ENV_DIR LOG [--compile] -- PIP-ARGUMENTS...

uv installs the same pinned versions as pip from the same places in a fraction of the time (the
harness environment: 18 s instead of 109 s; the vLLM environment: 39 s instead of 134 s, on these
2-core machines). uv reads no pip configuration, so the machine's (pip.conf, PIP_* variables: extra
indexes, local wheel folders, constraints, CA bundle) is read with `pip config list` and passed on.
uv itself is installed into ENV_DIR by pip (one small wheel, pinned below). If uv cannot do the
install, pip does it, with the same arguments; the log says which ran. Exit status: the
installer's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

UV = "uv==0.13.9"
# pip's configuration keys -> uv's options (lists are space-separated in pip's configuration)
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def pip_configuration(python: Path) -> dict[str, list[str]]:
    """pip's configured values by key (`pip config list`: `global.find-links='/opt/wheels'`,
    `:env:.extra-index-url='a b'`; environment variables win over files, as in pip)."""
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found: dict[str, tuple[int, list[str]]] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if not value or section not in ("global", "install", ":env:"):
            continue
        rank = {"global": 0, "install": 1, ":env:": 2}[section]
        if key not in found or rank >= found[key][0]:
            found[key] = (rank, shlex.split(value)[0].split() if value.strip("'\"") else [])
    return {k: v for k, (_, v) in found.items()}


def uv_arguments(config: dict[str, list[str]]) -> list[str]:
    args = ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version from any index
    for key, option in OPTIONS.items():
        for value in config.get(key, []):
            args += [option, value]
    return args


def main() -> int:
    env_dir, log_path = Path(sys.argv[1]), Path(sys.argv[2])
    rest = sys.argv[3:]
    compile_ = "--compile" in rest[: rest.index("--")]
    pip_args = rest[rest.index("--") + 1:]
    python = env_dir / "bin" / "python"
    config = pip_configuration(python)
    env = dict(os.environ)
    if config.get("cert") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = config["cert"][0]
    with open(log_path, "a") as log:
        def run(cmd: list[str]) -> int:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        if run([*pip, "install", "--no-compile", UV]) == 0:
            uv = [str(env_dir / "bin" / "uv"), "pip", "install", "--python", str(python), *uv_arguments(config)]
            if run([*uv, *(["--compile-bytecode"] if compile_ else []), *pip_args]) == 0:
                return 0
            log.write("uv could not install these; pip does\n")
        return run([*pip, "install", *([] if compile_ else ["--no-compile"]), *pip_args])


if __name__ == "__main__":
    sys.exit(main())
