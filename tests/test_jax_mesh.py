"""The JAX engine sharded over a device mesh (parameters on the model axis, batches on the data
axis), on CPU with XLA's simulated host devices: 1 vs 2 vs 4 devices give the same greedy tokens
and log-probs to float32 noise. Runs in a child process (the device count is fixed when jax starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json
import backends
from backends import Request, SamplingParams
rs = [Request.from_text(t, id=str(i)) for i, t in enumerate(
    ["What is the capital of France?", "Count: one, two,", "Hello there, how are", "Tell me a story"])]
s = SamplingParams(max_tokens=12, logprobs=5)
ref = backends.get("jax", model="tiny-gemma3").generate(rs, s)
out = {}
for name, mesh in (("2", {"model": 2}), ("4", {"data": 2, "model": 2})):
    side = backends.get("jax", model="tiny-gemma3", mesh=mesh)
    gens = side.generate(rs, s)
    sc = side.score(rs, [g.token_ids for g in ref])
    out[name] = {"greedy_equal": all(a.token_ids == b.token_ids for a, b in zip(ref, gens)),
                 "max_dlogprob": max(abs(p - q) for a, b in zip(ref, sc) for p, q in zip(a.logprobs, b.logprobs)),
                 "devices": len(side.memory().device_array_bytes or {}), "mesh": side.describe()["mesh"]}
print("RESULT " + json.dumps(out))
"""


def test_one_two_and_four_devices_agree(tiny_text_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, p.stderr[-3000:]
    out = json.loads(line[7:])
    for name, r in out.items():
        assert r["greedy_equal"] and r["max_dlogprob"] <= 1e-5, (name, r)
    assert out["2"]["mesh"] == {"data": 1, "model": 2} and out["4"]["mesh"] == {"data": 2, "model": 2}
    assert out["4"]["devices"] == 4


def test_a_mesh_larger_than_the_devices_says_how(jax_text):
    import backends

    with pytest.raises(backends.InputError, match="needs 8 devices.*xla_force_host_platform_device_count=8"):
        backends.get("jax", model="tiny-gemma3", mesh={"data": 2, "model": 4})
