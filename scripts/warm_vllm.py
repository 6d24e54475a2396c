"""Once per vLLM environment: what the first vLLM server start on a fresh machine builds, built
during environment set-up (`make env`) instead of inside the first comparison or test.

Measured on these 2-core machines: vLLM inspects each model architecture in a separate Python
process the first time it meets it (cached as `modelinfos/*.json` under VLLM_CACHE_ROOT), and
PyTorch's inductor compiles a few C++ kernels (Gemma 3's image attention mask, the sampler) the
first time an image prompt runs (cached under TORCHINDUCTOR_CACHE_DIR): 10.5 s for the first
image request with an empty cache, 2.6 s with it. Both caches live in paritybench's vLLM runtime
folder, shared by every clone, so this runs once per environment (a marker there records it).

    .venv/bin/python scripts/warm_vllm.py
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import backends  # noqa: E402
from backends import (  # noqa: E402
    Message,
    Request,
    SamplingParams,
    models,  # noqa: E402
)

MODELS = ("tiny-gemma3", "tiny-gemma3-vision")  # one of each Gemma 3 architecture vLLM serves


def warm(name: str) -> None:
    """One server of `name` started, answering a text prompt (and an image prompt where it can)."""
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with backends.get("vllm", model=name, warmup=False) as b:
        requests = [Request.from_text("Hello")]
        if "image" in b.capabilities.modalities:
            requests.append(Request(messages=[Message(role="user", content=[
                {"type": "image", "array": image}, {"type": "text", "text": "What is this?"}])]))
        for r in requests:
            b.generate([r], SamplingParams(max_tokens=2))


def main() -> None:
    env = backends.vllm_env_dir().resolve()
    marker = models.cache_root() / "vllm-runtime" / f".warm-{env.name}"
    if marker.exists():
        return
    t0 = time.perf_counter()
    for name in MODELS:
        models.resolve(name, want="hf")  # each tiny model built here, once, before the servers start
    # the servers side by side: much of a first start is one process waiting on another (vLLM's
    # model inspection in a subprocess, inductor's compiler), so two overlap on 2 cores
    with concurrent.futures.ThreadPoolExecutor(len(MODELS)) as pool:
        for done in [pool.submit(warm, name) for name in MODELS]:
            done.result()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.perf_counter() - t0:.0f}\n")
    print(f"[paritybench] vLLM's first-start caches built in {time.perf_counter() - t0:.0f}s ({', '.join(MODELS)})")


if __name__ == "__main__":
    try:
        main()
    except backends.ParitybenchError as e:  # not fatal: the first server start builds them instead
        print(f"[paritybench] warning: warming vLLM's caches failed ({str(e).splitlines()[0]})", file=sys.stderr)
