# mypy: check-untyped-defs
"""paritybench's JAX backend vs a bare `gm.text.Sampler` loop: steady-state output tokens/s.

Same model object, parameters, prompts (the chat-rendered text the backend feeds), batch, sampler
settings (cache length, output buffer, pad buckets) and fixed output length (end tokens ignored on
both sides). Both are warmed up (compiled) first, then alternate for ROUNDS rounds; medians are
compared. Goal: paritybench / bare >= 0.95.

    .venv/bin/python benchmarks/jax_vs_bare_sampler.py [--batch 16] [--input-len 64] [--output-len 64]

The last line is `ratio output_tok_s = X.XX`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from backends import SamplingParams  # noqa: E402
from backends import models as tok  # noqa: E402
from backends.jax import PAD_BUCKETS, JaxBackend, without_end_tokens  # noqa: E402
from harness import bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-gemma3")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import jax
    from gemma import gm

    with JaxBackend(args.model) as b:
        wl = bench.synthetic(b, num_prompts=args.batch, input_len=args.input_len, output_len=args.output_len)
        s = SamplingParams(max_tokens=args.output_len, ignore_eos=True, return_logprobs=False)
        b.generate(wl.requests, s)  # compiles; the backend picks its sampler settings
        [(max_out, cache_length, _)] = list(b._samplers)
        bare = gm.text.Sampler(model=b._model, params=b._params, tokenizer=without_end_tokens(b._tokenizer),
                               cache_length=cache_length, max_out_length=max_out, pad_length=PAD_BUCKETS)
        texts = [tok.render_chat(r) for r in wl.requests]

        def run_bare() -> int:
            out = bare.sample(texts, max_new_tokens=args.output_len, rng=0, return_state=True)
            return int(np.asarray(jax.block_until_ready(out.state.predicted_tokens))[:, : args.output_len].size)

        run_bare()  # compile
        ours, theirs = [], []
        for k in range(args.rounds):
            for who in (("ours", "bare") if k % 2 == 0 else ("bare", "ours")):
                t0 = time.perf_counter()
                if who == "ours":
                    n = sum(len(g.token_ids) for g in b.generate(wl.requests, s))
                    ours.append(n / (time.perf_counter() - t0))
                else:
                    n = run_bare()
                    theirs.append(n / (time.perf_counter() - t0))
            print(f"round {k + 1}: paritybench {ours[-1]:.1f} tok/s, bare sampler {theirs[-1]:.1f} tok/s")
    a, v = statistics.median(ours), statistics.median(theirs)
    print(f"\nbatch {args.batch}, prompts ~{args.input_len} tokens, {args.output_len} output tokens, "
          f"medians over {args.rounds} rounds")
    print(f"paritybench JAX backend  {a:10.1f} output tok/s")
    print(f"bare gm.text.Sampler     {v:10.1f} output tok/s")
    print(f"ratio output_tok_s = {a / v:.2f}")


if __name__ == "__main__":
    main()
