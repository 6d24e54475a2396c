"""The JAX engine: Google DeepMind's `gemma` library, in process.

    backends.get("jax", model="tiny-gemma3", dtype="float32")

Generation with `gm.text.Sampler`; log-probs and `score` from a teacher-forced `model.apply`;
compile time measured apart from the steady state (`CompileCounting`); the pixels gemma feeds
its vision tower (`ImagePixels`) and scoring with causal attention inside images
(`CausalImageScoring`) for the image diagnostics.
"""

from ._backend import PAD_BUCKETS, JaxBackend, compile_stats, memory_snapshot, without_end_tokens

__all__ = ["PAD_BUCKETS", "JaxBackend", "compile_stats", "memory_snapshot", "without_end_tokens"]
