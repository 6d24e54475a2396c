"""Make the suites' media in evals/media/ (committed; rerun only to change them).

    .venv/bin/python scripts/make_media.py --photos DIR

- Drawn images (Pillow, from fixed shapes): several sizes and aspect ratios.
- Photos: three public-domain / CC0 photos shipped in scikit-image's wheel (skimage/data/), resized
  small. DIR is that folder, e.g. from `pip download scikit-image --no-deps` and unzip.
- Tones, chirp and noise (numpy, fixed seed) as 16-bit PCM WAV at several rates and lengths.
- Speech: eSpeak NG (Debian package espeak-ng), resampled to 16 kHz.
Sources and licences are written to evals/media/SOURCES.md.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "evals" / "media"

PHOTOS = {  # file in skimage/data -> (our name, size, licence line from skimage's data docs)
    "chelsea.png": ("cat_photo_96x64.png", (96, 64), "Chelsea the cat; CC0 by the photographer (Stefan van der Walt)"),
    "coffee.png": ("coffee_photo_80x60.png", (80, 60), "a cup of coffee; CC0 by the photographer (Rachel Michetti)"),
    "astronaut.png": ("astronaut_photo_64x64.png", (64, 64),
                      "astronaut Eileen Collins; NASA Great Images database, public domain"),
}
SPEECH = {"speech_paris.wav": "The capital of France is Paris.",
          "speech_count.wav": "One, two, three, four, five."}


def drawn() -> dict[str, str]:
    made = {}

    def save(name: str, im: Image.Image, what: str) -> None:
        im.save(OUT / name, optimize=True)
        made[name] = what

    im = Image.new("RGB", (64, 64), (220, 30, 30))
    save("red_square_64.png", im, "a plain red square, 64x64")
    im = Image.new("RGB", (96, 80), "white")
    ImageDraw.Draw(im).ellipse((18, 10, 78, 70), fill=(30, 60, 220))
    save("blue_circle_96x80.png", im, "a blue circle on white, 96x80")
    im = Image.new("RGB", (200, 50), "white")
    for k in range(5):
        ImageDraw.Draw(im).rectangle((k * 40, 0, k * 40 + 19, 49), fill=(20, 140, 40))
    save("green_stripes_200x50.png", im, "green vertical stripes, wide 200x50")
    im = Image.new("RGB", (40, 160), (250, 240, 200))
    ImageDraw.Draw(im).polygon([(20, 10), (5, 150), (35, 150)], fill=(240, 160, 0))
    save("orange_triangle_40x160.png", im, "an orange triangle, tall 40x160")
    board = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    save("checker_8x8.png", Image.fromarray(np.stack([board] * 3, -1)), "a black and white checkerboard, 8x8")
    return made


def photos(src: Path) -> dict[str, str]:
    made = {}
    for f, (name, size, licence) in PHOTOS.items():
        with Image.open(src / f) as im:
            im.convert("RGB").resize(size, Image.LANCZOS).save(OUT / name, optimize=True)
        made[name] = f"{licence}; scikit-image sample data skimage/data/{f}, resized to {size[0]}x{size[1]}"
    return made


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def sounds() -> dict[str, str]:
    made = {}
    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    _write_wav(OUT / "tone_440hz_1s_16k.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 16_000)
    made["tone_440hz_1s_16k.wav"] = "a 440 Hz sine, 1 s, 16 kHz mono"
    t = np.arange(3 * 16_000) / 16_000
    _write_wav(OUT / "chirp_3s_16k.wav", 0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t), 16_000)
    made["chirp_3s_16k.wav"] = "a rising chirp 200-2000 Hz, 3 s, 16 kHz mono"
    _write_wav(OUT / "noise_0.5s_8k.wav", 0.2 * rng.standard_normal(4_000), 8_000)
    made["noise_0.5s_8k.wav"] = "white noise (seed 0), 0.5 s, 8 kHz mono"
    t = np.arange(int(1.5 * 22_050)) / 22_050
    beeps = 0.4 * np.sin(2 * np.pi * 880 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    _write_wav(OUT / "beeps_stereo_1.5s_22k.wav", np.stack([beeps, beeps[::-1]], -1), 22_050)
    made["beeps_stereo_1.5s_22k.wav"] = "880 Hz beeps, 1.5 s, 22.05 kHz stereo"
    return made


def speech() -> dict[str, str]:
    made = {}
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout.split()[3]
    for name, text in SPEECH.items():
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp, "raw.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
            with wave.open(str(raw), "rb") as w:
                rate = w.getframerate()
                x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        n = int(len(x) * 16_000 / rate)
        y = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
        _write_wav(OUT / name, y, 16_000)
        made[name] = f"speech {text!r}, synthesized with eSpeak NG {version} (voice en-us), 16 kHz mono"
    return made


def long_context() -> dict[str, str]:
    """About 3600 tokens of the tiny models' tokenizer (their limit is 4096): lines of paritybench's
    own tokenizer corpus in Latin and Cyrillic scripts, up to 5750 characters."""
    corpus = Path(__file__).resolve().parent.parent / "backends" / "models" / "data" / "tokenizer_corpus.txt"
    out, n = [], 0
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.strip() and all(ord(c) < 0x2000 for c in line):
            if n + len(line) > 5750:
                break
            out.append(line)
            n += len(line)
    (OUT / "long_context.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return {"long_context.txt": f"{len(out)} lines of paritybench's tokenizer corpus (3578 tokens of tiny-gemma3)"}


def window_texts() -> dict[str, str]:
    """Prompts beyond the sliding window of the real Gemma 3 shapes (512 tokens): lines of the
    tokenizer corpus from a given line until the text reaches a given length (about 600 and 1100
    tokens of the tiny tokenizer, which random-gemma-3-270m and -1b use)."""
    corpus = Path(__file__).resolve().parent.parent / "backends" / "models" / "data" / "tokenizer_corpus.txt"
    lines = corpus.read_text(encoding="utf-8").splitlines()
    made = {}
    for name, start, chars, tokens in (("beyond_one_window.txt", 5000, 1455, 601),
                                       ("beyond_two_windows.txt", 7000, 2740, 1102)):
        out: list[str] = []
        for line in lines[start:]:
            out.append(line)
            if len("\n".join(out)) >= chars:
                break
        (OUT / name).write_text("\n".join(out) + "\n", encoding="utf-8")
        made[name] = f"lines {start + 1}-{start + len(out)} of paritybench's tokenizer corpus ({tokens} tokens of the tiny tokenizer)"
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, required=True, help="skimage/data folder of a scikit-image wheel")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    made = {**drawn(), **photos(args.photos), **sounds(), **speech(), **long_context(), **window_texts()}
    lines = ["# Media of the suites", "", "Made by `scripts/make_media.py`; every file is free to use:", "",
             "- drawn images, tones, chirp, noise, beeps and the long text: generated by paritybench's script (no third-party content);",
             "- photos: scikit-image's sample data, whose documentation states the licences below;",
             "- speech: synthesized by eSpeak NG (GPL-3.0 program; its synthesized output is not covered by the GPL).",
             "", "| file | bytes | what, source, licence |", "|---|---|---|"]
    lines += [f"| {n} | {(OUT / n).stat().st_size} | {what} |" for n, what in sorted(made.items())]
    (OUT / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
