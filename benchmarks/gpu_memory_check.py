# mypy: check-untyped-defs
"""Checks paritybench's GPU memory readings against known allocations, on a machine with a GPU.

What the memory sections of `paritybench bench` report on GPU comes from two places:
  - the JAX side: `backends.jax.memory_snapshot()` (XLA allocator's bytes_in_use and
    peak_bytes_in_use, live arrays);
  - the vLLM side: `backends.vllm.nvml_process_bytes(pids)` (NVML's per-process used
    memory of the server's process tree).
This script allocates known amounts and prints what each reading says, so the readings can be
trusted (or their limits documented). It needs jax with a GPU plugin, and torch for the NVML check
(a child process allocates with torch, as vLLM's server does). It does not need the gemma library
or vLLM.

    python benchmarks/gpu_memory_check.py            # prints a table; exit 1 if a check fails
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1 << 30
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def jax_side() -> None:
    import jax
    import jax.numpy as jnp

    from backends.jax import memory_snapshot
    from harness.bench import MemorySampler

    dev = jax.devices()[0]
    print(f"jax {jax.__version__} on {dev.platform}: {dev.device_kind}", flush=True)
    before = memory_snapshot()
    x = jnp.ones((GIB // 4,), jnp.float32)  # 1 GiB
    x.block_until_ready()
    held = memory_snapshot()
    grew = (held.device_bytes_in_use or 0) - (before.device_bytes_in_use or 0)
    check("jax bytes_in_use grows by a 1 GiB array", abs(grew - GIB) < 0.02 * GIB, f"{grew / GIB:.3f} GiB")
    live = held.live_array_bytes or 0
    check("jax live arrays count it", live >= GIB, f"{live / GIB:.3f} GiB")

    @jax.jit
    def step(a):
        b = a * 2.0  # a 1 GiB temporary inside the program
        return (b + a).sum()

    with MemorySampler(memory_snapshot, 0.05) as mem:
        for _ in range(20):
            step(x).block_until_ready()
    s = mem.summary()
    peak = s.peak_device_peak_bytes or 0
    check("jax peak_bytes_in_use sees the program's temporaries", peak >= 2 * GIB - 0.02 * GIB,
          f"peak {peak / GIB:.3f} GiB over {s.samples} samples (array 1 GiB + temporaries)")
    del x
    after = memory_snapshot()
    check("jax bytes_in_use falls back when the array is freed",
          (after.device_bytes_in_use or 0) - (before.device_bytes_in_use or 0) < 0.02 * GIB,
          f"{(after.device_bytes_in_use or 0) / GIB:.3f} GiB in use")


CHILD = textwrap.dedent("""
    import sys, time, torch
    x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print(torch.cuda.memory_reserved(), flush=True)
    time.sleep(60)
""")


def nvml_side() -> None:
    from backends.vllm import nvml_process_bytes

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(2 * GIB)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    try:
        assert child.stdout is not None
        reserved = int(child.stdout.readline())
        time.sleep(1.0)
        seen = nvml_process_bytes([child.pid])
        check("NVML per-process bytes of a torch process holding 2 GiB",
              seen is not None and reserved <= seen <= reserved + 1.5 * GIB,
              f"NVML {(seen or 0) / GIB:.3f} GiB, torch reserved {reserved / GIB:.3f} GiB "
              "(NVML adds the CUDA context)")
        mine = nvml_process_bytes([os.getpid()])
        print(f"info  NVML bytes of this JAX process: {(mine or 0) / GIB:.1f} GiB (XLA's preallocated pool; "
              "the JAX side reports bytes_in_use instead)", flush=True)
        none = nvml_process_bytes([os.getpid() + 10_000_000])
        check("NVML bytes of a pid not on the GPU", none == 0, f"{none}")
    finally:
        child.kill()
        child.wait()


def main() -> int:
    with contextlib.suppress(OSError):  # no nvidia-smi: the checks below say what is missing
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip(), flush=True)
    for part in (jax_side, nvml_side):
        try:
            part()
        except Exception as e:  # report and go on: one missing library must not hide the other check
            check(part.__name__, False, f"{type(e).__name__}: {e}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_memory_check.json").write_text(json.dumps(
            [{"check": n, "ok": ok, "detail": d} for n, ok, d in RESULTS], indent=1))
    return 0 if all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
