"""A suite spread over several attached vLLM servers (`--vllm-url A,B`): requests go round robin;
a server that dies mid-run is left out and its requests go to the others, so nothing is lost, and
`--resume` of the same run still starts with that server gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_engine_core_beside_its_worker, cli_in_process

import backends
from backends import Request, SamplingParams
from backends.vllm import VllmServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def second(tiny_text_dir):
    """A second server, in vLLM's default CPU layout (its model worker in a process of its own)."""
    with VllmServer(tiny_text_dir / "hf", served_model_name="tiny-gemma3", dtype="float32", max_model_len=1024,
                    worker_in_engine_core=False) as s:
        yield s


def test_a_group_with_a_server_down_at_start_uses_the_others(vllm_text):
    with backends.get("vllm", model="tiny-gemma3", url=f"{vllm_text.url},http://127.0.0.1:9/v1") as pool:
        g = pool.generate([Request.from_text("Hello", id="h")], SamplingParams(max_tokens=4))
        assert g[0].token_ids and list(pool.describe()["left_out"]) == ["http://127.0.0.1:9"]
    with pytest.raises(backends.InputError, match="none of the vLLM servers"):
        backends.get("vllm", model="tiny-gemma3", url="http://127.0.0.1:9/v1,http://127.0.0.1:10/v1")


def test_a_server_killed_mid_run_loses_nothing(tmp_path, vllm_text, second):
    # (the second server's layout first: the engine core placed beside its worker process)
    assert "--distributed-executor-backend" not in second.flags and not second.engine_env
    assert any(p.name().startswith("VLLM::Worker") for p in second.process_tree())
    assert_engine_core_beside_its_worker(second)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "harness.cli", "compare", "--model", "tiny-gemma3",
            "--suite", ROOT / "evals" / "smoke.yaml", "--max-tokens", "8", "--vllm-url", f"{vllm_text.url},{second.url}",
            "--num-prompts", "32", "--output-len", "32", "--concurrency", "4", "--batch-sizes", "1", "--out", out]
    proc = subprocess.Popen([str(a) for a in args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill_when_the_bench_starts() -> None:
        while proc.poll() is None:
            path = out / "results.jsonl"
            if path.exists() and '"type": "parity"' in path.read_text():
                time.sleep(1.0)
                os.killpg(second.proc.pid, signal.SIGKILL)  # a crash: no goodbye
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_the_bench_starts)
    killer.start()
    stdout, stderr = proc.communicate(timeout=900)
    killer.join()
    assert proc.returncode == 0, stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert all(p["verdict"] == "pass" for p in r["parity"]["prompts"]), [p["reasons"] for p in r["parity"]["prompts"]]
    assert r["bench"]["vllm"] and not r.get("error")
    assert all(run["completed"] == run["num_prompts"] for run in r["bench"]["vllm"]["runs"])
    assert second.base_url in r["setup"]["vllm"]["describe"]["left_out"]
    # the run continues from its folder with the dead server left out at start
    p = cli_in_process("compare", "--resume", out)
    assert p.returncode == 0, p.stderr[-3000:]
    left = json.loads((out / "results.json").read_text())["setup"]["vllm"]["describe"]["left_out"]
    assert second.base_url in left, left
