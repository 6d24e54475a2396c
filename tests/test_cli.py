"""The `paritybench` command as a user runs it."""

import json
import subprocess
import sys

from backends import REGISTRY


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)


def test_models_list_names_every_entry():
    p = _cli("models", "list")
    assert p.returncode == 0, p.stderr
    for name in REGISTRY:
        assert name in p.stdout


def test_models_build_prints_folder(tmp_path):
    p = _cli("models", "build", "tiny-gemma3", "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "hf" / "config.json").is_file() and (tmp_path / "m" / "params").is_dir()


def test_demo_writes_report(tmp_path, tiny_text_dir):
    p = _cli("demo", "--out", str(tmp_path / "demo"), "--max-tokens", "8")
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(r["prompts"]) == 5 and all(x["argmax_equals_greedy"] and x["repeatable"] for x in r["prompts"])
    assert r["first_call_compile_s"] > 0 and r["steady_call_s"] < r["first_call_s"]
    assert "| qa-capital |" in (tmp_path / "demo" / "report.md").read_text()
