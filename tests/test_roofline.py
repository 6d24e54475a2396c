"""The roofline estimate (harness/roofline.py) against hand-computed figures, and where it says why
it has none."""

import pytest

from backends import ModelSettings
from harness import roofline
from harness.results import MachinePeaks

PEAKS = MachinePeaks(matmul_flops=1000.0, read_bytes_s=1000.0)
# one layer: q, k, v, o = 4 x 4 each, gate/up/down 4 x 8: 160 matmul weights; a 10 x 4 table
TINY = ModelSettings(family="gemma3", embed_dim=4, hidden_dim=8, num_heads=1, num_kv_heads=1, head_dim=4,
                     layer_types=("full",), sliding_window=None, logit_rows=10, dtype="float32")


def test_decode_and_prefill_by_hand():
    # batch 2 at context 3: flops 2*2*(160+40) + 4*2*4*3 = 896; bytes (160+40)*4 + 2*(2*4*3)*4 = 992
    assert roofline.decode_tok_s(TINY, 2, 3, PEAKS) == pytest.approx(2 / 0.992)
    # memory-bound unless the machine reads faster than it multiplies
    fast_memory = MachinePeaks(matmul_flops=1000.0, read_bytes_s=1e6)
    assert roofline.decode_tok_s(TINY, 2, 3, fast_memory) == pytest.approx(2 / 0.896)
    # a sliding layer sees its window only: flops 800 + 4*2*4*2 = 864, bytes 800 + 2*16*4 = 928
    sliding = TINY.model_copy(update={"layer_types": ("sliding",), "sliding_window": 2})
    assert roofline.decode_tok_s(sliding, 2, 3, PEAKS) == pytest.approx(2 / 0.928)
    # prefill of 3 tokens: 2*3*160 + 2*10*4 (last position's logits) + 4*4*(1+2+3) = 1136 FLOPs
    assert roofline.prefill_s(TINY, 3, PEAKS) == pytest.approx(1.136)


def test_weight_bytes_follow_dtype_and_quantization():
    assert roofline.weight_bytes(TINY) == 200 * 4
    bf16 = TINY.model_copy(update={"dtype": "bfloat16"})
    assert roofline.weight_bytes(bf16) == 200 * 2
    fp8 = bf16.model_copy(update={"quantization": "fp8"})
    assert roofline.weight_bytes(fp8) == 160 * 1 + 40 * 2  # the logits table stays at the compute dtype
    # an fp8 KV cache halves what a bfloat16 step reads of keys and values: 400 + 2*24*1 bytes
    kv8 = bf16.model_copy(update={"kv_cache_dtype": "fp8"})
    fast_compute = MachinePeaks(matmul_flops=1e6, read_bytes_s=1000.0)
    assert roofline.decode_tok_s(kv8, 2, 3, fast_compute) == pytest.approx(2 / 0.448)
    assert roofline.decode_tok_s(bf16, 2, 3, fast_compute) == pytest.approx(2 / 0.496)


@pytest.mark.parametrize("update, why", [
    ({"family": "gemma3n"}, "gemma3n: AltUp"),
    ({"quantization": "compressed-tensors"}, "compressed-tensors: their stored size"),
    ({"head_dim": None}, "does not report its model's head_dim"),
    ({"dtype": "int4"}, "unknown bytes per value of dtype int4"),
])
def test_no_estimate_names_why(update, why):
    s = TINY.model_copy(update=update)
    assert why in roofline.why_not(s)
    r = roofline.for_levels(s, [1, 2], 3, 2, PEAKS)
    assert not r.tok_s and why in r.note


def test_levels_at_the_mean_context():
    r = roofline.for_levels(TINY, [1, 2], input_len=2, output_len=2, peaks=PEAKS)
    assert r.context == 3 and r.tok_s[2] == pytest.approx(2 / 0.992) and r.note is None
    assert r.prefill_ms == pytest.approx(roofline.prefill_s(TINY, 2, PEAKS) * 1e3)


def test_the_machine_is_measured():
    m = roofline.measure_machine()
    assert 1e9 < m.matmul_flops < 1e14 and 1e8 < m.read_bytes_s < 1e13
