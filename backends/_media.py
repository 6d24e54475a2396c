"""Media in one place: images decoded, checked and resized (gemma's way), audio read, checked,
resampled and encoded.

Every engine and the suite reader use these functions, so an image or a clip means the same
pixels and samples on every side of a comparison.
"""

from __future__ import annotations

import base64
import io
import wave
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError

MAX_IMAGE_PIXELS = 50_000_000  # refuse larger images (decompression bombs)
MAX_IMAGE_SIDE = 4096  # longer sides are downscaled when a suite is read
AUDIO_RATES = (8_000, 48_000)  # Hz
AUDIO_SECONDS = (0.1, 60.0)
AUDIO_RATE = 16_000  # what Gemma 3n's audio feature extractor takes


# ----------------------------------------------------------------------------- images


def decode_image(path: Path | None = None, data: bytes | None = None) -> np.ndarray:
    """An image file or encoded bytes as an HxWx3 uint8 array (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    src = str(path) if path is not None else "<image bytes>"
    try:
        if path is not None:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        with Image.open(io.BytesIO(data or b"")) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"image file not found: {src}; check the path in the request") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {src}: {e}; give a PNG or JPEG file") from None


def rgb(array: np.ndarray) -> np.ndarray:
    """An HxWxC uint8 array (C in 1, 3, 4) as HxWx3."""
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def check_image(path: Path) -> str | None:
    """Why the image file at `path` cannot be used, or None."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                return (f"image {path} is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the limit of "
                        f"{MAX_IMAGE_PIXELS / 1e6:.0f}; downscale it first")
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        return f"cannot read image {path} ({type(e).__name__}: {e}); give a PNG or JPEG file"
    if w < 1 or h < 1:
        return f"image {path} is empty ({w}x{h})"
    return None


def downscaled(path: Path, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray | None:
    """The image's pixels downscaled (Lanczos) so its longest side is `max_side`, or None when it
    already fits."""
    from PIL import Image

    with Image.open(path) as im:
        if max(im.size) <= max_side:
            return None
        k = max_side / max(im.size)
        small = im.convert("RGB").resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def png_data_uri(image: np.ndarray) -> str:
    """An HxWx3 uint8 image as a PNG data URI (lossless: the server decodes the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gemma_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """What the gemma library feeds its vision tower for an HxWx3 uint8 image: a bilinear,
    antialiased resize in float to size x size, normalised to [-1, 1]."""
    import jax.numpy as jnp

    from . import _gemma

    return np.asarray(_gemma.preprocess_image(jnp.asarray(image, jnp.float32), size))


def gemma_resize(image: np.ndarray, size: int) -> np.ndarray:
    """`image` (HxWx3 uint8) resized to size x size as gemma resizes it, rounded back to uint8
    (at most 0.5/255 per pixel away from what gemma feeds for the image alone)."""
    return np.clip(np.rint((gemma_pixels(image, size) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- audio


def check_audio(path: Path) -> str | None:
    """Why the audio file at `path` cannot be used (WAV PCM, 8-48 kHz, mono or stereo, 0.1-60 s),
    or None."""
    if not path.is_file():
        return f"audio file not found: {path}"
    if path.suffix.lower() != ".wav":
        return f"audio {path}: format {path.suffix or '(none)'} is not supported; convert it to WAV (PCM, 16 kHz)"
    try:
        with wave.open(str(path), "rb") as w:
            rate, frames, channels = w.getframerate(), w.getnframes(), w.getnchannels()
    except (wave.Error, EOFError, OSError) as e:
        return f"cannot read audio {path} as WAV ({type(e).__name__}: {e or 'empty file'})"
    if not AUDIO_RATES[0] <= rate <= AUDIO_RATES[1]:
        return (f"audio {path}: sample rate {rate} Hz is outside {AUDIO_RATES[0]}-{AUDIO_RATES[1]} Hz; "
                "resample it (16 kHz is what Gemma 3n takes)")
    if channels not in (1, 2):
        return f"audio {path}: {channels} channels; give mono or stereo"
    seconds = frames / rate
    if not AUDIO_SECONDS[0] <= seconds <= AUDIO_SECONDS[1]:
        return f"audio {path}: {seconds:.2f} s long; the rule is {AUDIO_SECONDS[0]}-{AUDIO_SECONDS[1]:.0f} s"
    return None


def read_wav(path: Path, data: bytes | None = None) -> tuple[np.ndarray, int]:
    """(float samples in [-1, 1], frames x channels or frames; rate in Hz) of a PCM WAV file."""
    try:
        raw_file = data if data is not None else Path(path).read_bytes()
        with wave.open(io.BytesIO(raw_file), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise InputError(f"audio file not found: {path}; check the path in the request") from None
    except (wave.Error, EOFError) as e:
        raise InputError(f"audio file {path}: not a readable PCM WAV file ({e or 'empty'}); convert it to 16-bit WAV") from None
    if width == 1:
        x: np.ndarray = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    else:
        raise InputError(f"audio file {path}: {8 * width}-bit samples are not supported; convert it to 16-bit WAV")
    return (x.reshape(-1, channels) if channels > 1 else x), rate


def mono_at(samples: np.ndarray, rate: int, target: int = AUDIO_RATE) -> np.ndarray:
    """Samples downmixed to mono and resampled (polyphase) from `rate` to `target` Hz."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != target:
        from scipy.signal import resample_poly

        g = gcd(rate, target)
        x = resample_poly(x, target // g, rate // g).astype(np.float32)
    return x


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def audio_as_wav(part: Any, rate: int = AUDIO_RATE) -> bytes:
    """An `AudioPart` (WAV file or samples) as a mono 16-bit WAV at `rate` Hz."""
    if part.path is not None:
        samples, src_rate = read_wav(Path(part.path))
    else:
        samples, src_rate = np.asarray(part.samples, dtype=np.float32), int(part.rate)
    return wav_bytes(mono_at(samples, src_rate, rate), rate)
