"""Suite files: the shipped suites are valid; every kind of bad input is one clear error naming the
file, the line and the field, and a broken prompt leaves the suite's other prompts usable."""

import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

import evals
from backends import InputError
from harness import scoring, suites

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "evals").glob("*.yaml"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_shipped_suites_are_valid_and_cover_every_modality():
    assert suites.check(SHIPPED) == []
    mods = {path.stem: {m for r in suites.read(path).requests for m in r.modalities} for path in SHIPPED}
    assert mods["images"] == {"text", "image"} and mods["audio"] == {"text", "audio"}
    assert mods["mixed"] == mods["default"] == {"text", "image", "audio"}
    images = suites.read(evals.path("images"))
    assert max(len(r.images) for r in images.requests) == 2
    shapes = {p.to_rgb_array().shape[:2] for r in images.requests for p in r.images}
    assert {(64, 64), (80, 96), (50, 200), (160, 40), (8, 8)} <= shapes  # sizes and aspect ratios
    long = suites.read(evals.path("text")).by_id()["long-context"].request
    assert len(long.messages[0].content[0].text) > 5000
    plain = suites.read(evals.path("long")).by_id()["plain-beyond-seven-windows"].request
    assert not plain.is_chat and plain.text.endswith("\n\nThe capital of France is") and len(plain.text) > 5000


def _suite(tmp_path, body: str, media: tuple[str, ...] = ()) -> Path:
    for m in media:
        shutil.copy(ROOT / "evals" / "media" / m, tmp_path / m)
    p = tmp_path / "s.yaml"
    p.write_text(body)
    return p


GOOD = "  - id: ok\n    messages:\n      - {role: user, content: hi}\n"


def _wav(path: Path, rate: int, seconds: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(rate * seconds), "<i2").tobytes())


@pytest.mark.parametrize("part, make, expected", [
    ("{type: image, path: missing.png}", None, "image file not found"),
    ("{type: image, path: bad.png}", lambda d: (d / "bad.png").write_bytes(
        (ROOT / "evals/media/cat_photo_96x64.png").read_bytes()[:300]), "cannot read image"),
    ("{type: image, path: notes.png}", lambda d: (d / "notes.png").write_text("hello"), "cannot read image"),
    ("{type: audio, path: a.mp3}", lambda d: (d / "a.mp3").write_bytes(b"ID3..."), "format .mp3 is not supported"),
    ("{type: audio, path: empty.wav}", lambda d: (d / "empty.wav").write_bytes(b""), "cannot read audio"),
    ("{type: audio, path: low.wav}", lambda d: _wav(d / "low.wav", 4000, 1.0), "sample rate 4000 Hz"),
    ("{type: audio, path: long.wav}", lambda d: _wav(d / "long.wav", 16000, 61.0), "61.00 s long"),
    ("{type: audio, path: short.wav}", lambda d: _wav(d / "short.wav", 16000, 0.01), "0.01 s long"),
    ("{type: imag, path: x.png}", None, "prompts.1.messages.0.content.0"),
    ("{type: text, txt: hello}", None, "unknown field"),
])
def test_bad_media_or_part_is_one_error_with_file_line_field_and_others_still_run(tmp_path, part, make, expected):
    if make:
        make(tmp_path)
    body = f"name: t\nprompts:\n{GOOD}  - id: broken\n    messages:\n      - role: user\n        content:\n          - {part}\n"
    path = _suite(tmp_path, body)
    s = suites.read(path)
    assert [p.id for p in s.prompts] == ["ok", "broken"]
    assert s.prompts[0].request is not None and s.prompts[0].error is None
    err = s.prompts[1].error
    assert err.startswith(f"{path} line 10: field prompts.1.messages.0.content.0"), err
    assert expected in err and "\n" not in err
    with pytest.raises(InputError, match="line 10"):
        suites.load(path)


@pytest.mark.parametrize("prompt, line, field, expected", [
    ("  - id: x\n    mesages:\n      - {role: user, content: hi}\n", 7, "prompts.1.mesages", "unknown field"),
    ("  - id: x\n    messages:\n      - {role: robot, content: hi}\n", 8, "prompts.1.messages.0.role", "Input should be"),
    ("  - id: x\n    messages: []\n", 7, "prompts.1.messages", "at least 1"),
    ("  - id: ok\n    messages:\n      - {role: user, content: hi}\n", 6, "prompts.1.id", "used twice"),
    ("  - id: x\n    messages:\n      - {role: user, content: hi}\n    scorer: numeric\n    reference: abc\n", 6,
     "prompts.1", "needs a number"),
    ("  - id: x\n    messages:\n      - {role: user, content: hi}\n    scorer: regex\n    reference: '('\n", 6,
     "prompts.1", "regular expression"),
    ("  - id: x\n    messages:\n      - {role: user, content: hi}\n    scorer: fuzzy\n    reference: a\n", 9,
     "prompts.1.scorer", "Input should be"),
    ("  - id: x y\n    messages:\n      - {role: user, content: hi}\n", 6, "prompts.1.id", "pattern"),
    # a prompt must end with the user's turn: one line at the assistant message, not pydantic's three
    ("  - id: x\n    messages:\n      - {role: user, content: hi}\n      - {role: assistant, content: 'The answer is'}\n",
     9, "prompts.1.messages.1.role", "ends with an assistant message"),
    ("  - id: x\n    messages:\n      - {role: assistant, content: a}\n      - {role: user, content: hi}\n", 8,
     "prompts.1.messages", "roles must alternate"),
    # empty text is refused where it is written
    ("  - id: x\n    messages:\n      - {role: user, content: ''}\n", 8, "prompts.1.messages.0.content", "text is empty"),
    ("  - id: x\n    messages:\n      - role: user\n        content:\n          - {type: text, text: '  '}\n", 10,
     "prompts.1.messages.0.content.0.text", "text is empty"),
    ("  - id: x\n    messages:\n      - {role: user, content: []}\n", 8, "prompts.1.messages.0.content", "no parts"),
    # a plain-text prompt: text or a file, never beside messages
    ("  - id: x\n    text: hi\n    messages:\n      - {role: user, content: hi}\n", 6, "prompts.1",
     "either messages (a chat) or text / file"),
    ("  - id: x\n    text: '  '\n", 6, "prompts.1", "the text is empty"),
    ("  - id: x\n    file: missing.txt\n    text: then\n", 7, "prompts.1.file", "cannot read text file"),
])
def test_schema_errors_name_file_line_and_field(tmp_path, prompt, line, field, expected):
    path = _suite(tmp_path, f"name: t\nprompts:\n{GOOD}{prompt}")
    s = suites.read(path)
    assert s.prompts[0].request is not None
    assert s.errors[0].startswith(f"{path} line {line}: field {field}"), s.errors[0]
    assert expected in s.errors[0] and "\n" not in s.errors[0]


def test_suite_level_errors(tmp_path):
    for body, expected in [("name: t\nprompt:\n" + GOOD, "line 2: field prompt: unknown field"),
                           ("prompts:\n" + GOOD, "field name: Field required"),
                           ("name: t\nprompts: [\n", "invalid YAML"),
                           ("- just a list\n", "a suite is a mapping")]:
        path = _suite(tmp_path, body)
        with pytest.raises(InputError) as e:
            suites.read(path)
        assert str(e.value).startswith(str(path)) and expected in str(e.value), str(e.value)
    with pytest.raises(InputError, match="suite file not found"):
        suites.read(tmp_path / "nope.yaml")


def test_suites_check_cli(tmp_path):
    p = cli("suites", "check", *SHIPPED)
    assert p.returncode == 0 and "all valid" in p.stdout
    bad = _suite(tmp_path, f"name: t\nprompts:\n{GOOD}  - id: b\n    messages:\n      - role: user\n        content:\n"
                           "          - {type: image, path: gone.png}\n")
    p = cli("suites", "check", bad)
    assert p.returncode == 1 and f"{bad} line 10" in p.stderr and "gone.png" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("scorer, ref, answer, ok", [
    ("exact", "Paris", " paris. ", True), ("exact", "Paris", "Paris is", False),
    ("contains", "Paris", "I think PARIS!", True), ("contains", "Paris", "Lyon", False),
    ("regex", r"(?i)^\s*yes", "Yes, it is", True), ("regex", r"^yes", "Yes", False),
    ("numeric", 42, "The answer is 42.", True), ("numeric", 42, "41.9", False), ("numeric", 1000, "1,000 apples", True),
    ("numeric", 5, "no number", False),
])
def test_scorers(scorer, ref, answer, ok):
    assert scoring.score(scorer, ref, answer) is ok
    assert scoring.score("numeric", 3.14, "pi is 3.1416", tolerance=0.01) is True


# ---------------------------------------------------------------- media limits (docs/suites.md)


def test_media_path_outside_the_suite_folder_is_refused_unless_allowed(tmp_path):
    (tmp_path / "suite").mkdir()
    shutil.copy(ROOT / "evals/media/red_square_64.png", tmp_path / "outside.png")
    body = "prompts:\n  - id: x\n    messages:\n      - role: user\n        content:\n" \
           "          - {type: image, path: ../outside.png}\n"
    path = tmp_path / "suite" / "s.yaml"
    path.write_text("name: t\n" + body)
    err = suites.read(path).prompts[0].error
    assert err.startswith(f"{path} line 7: field prompts.0.messages.0.content.0.path: ../outside.png leaves")
    assert "allow_media_outside" in err
    path.write_text("name: t\nallow_media_outside: true\n" + body)
    assert suites.read(path).prompts[0].error is None


def test_huge_images_are_downscaled_or_refused_by_the_rule(tmp_path):
    from PIL import Image

    Image.new("L", (6000, 1500), 128).save(tmp_path / "wide.png")  # 9 MP, longest side over 4096
    Image.new("L", (10000, 6000), 0).save(tmp_path / "huge.png")  # 60 MP: over the limit
    body = "name: t\nprompts:\n" + "".join(
        f"  - id: {n}\n    messages:\n      - role: user\n        content:\n          - {{type: image, path: {n}.png}}\n"
        for n in ("wide", "huge"))
    s = suites.read(_suite(tmp_path, body))
    wide = s.by_id()["wide"].request.images[0].to_rgb_array()
    assert wide.shape == (1024, 4096, 3)  # aspect kept
    err = s.by_id()["huge"].error
    assert "line 12" in err and "10000x6000 (60 megapixels), over the limit of 50" in err


# ---------------------------------------------------------------- property-based: never a traceback

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIELDS = ["name", "description", "prompts", "id", "messages", "role", "content", "type", "text", "path", "file",
          "reference", "scorer", "tolerance", "tags", "allow_media_outside", "nmae", "promts", "mesages", "rol",
          "model", "backends", "bench", "concurrency", "batch_sizes", "out", "seed", "max_tokens", "llm", "provider",
          "vllm_base_url", "paritybench", "temperature", "enabled", "num_prompts"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(["user", "assistant", "system", "text", "image", "audio", "exact", "numeric",
                                    "regex", "contains", "vllm", "jax", "x.png", "../x.png", "media/red_square_64.png",
                                    "media/speech_paris.wav", "(", "tiny-gemma3", ""]), st.text(max_size=8))
DOCS = st.recursive(VALUES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
                    max_leaves=25)


def _assert_clear(err: str, path: Path) -> None:
    assert err.startswith(str(path)) and " line " in err, err
    assert "\n" not in err and "Traceback" not in err
    if "invalid YAML" not in err:
        assert "field " in err or "mapping" in err, err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_any_suite_document_gives_clear_errors_never_a_traceback(tmp_path, doc):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        s = suites.read(path)
    except InputError as e:
        _assert_clear(str(e), path)
        return
    for p in s.prompts:
        if p.error:
            _assert_clear(p.error, path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS, text=st.text(max_size=60))
def test_any_config_document_gives_clear_errors_never_a_traceback(tmp_path, doc, text):
    import yaml

    from harness import config

    for body in (yaml.safe_dump(doc, allow_unicode=True), text):
        path = tmp_path / "c.yaml"
        path.write_text(body)
        try:
            config.load(path)
        except InputError as e:
            _assert_clear(str(e), path)
