"""The Hugging Face engine: transformers in process, on the CPU.

`HfBackend(model, hf_dir)` loads a local Hugging Face folder of a Gemma 3 model as a transformers
user would: `AutoConfig` decides between `AutoModelForCausalLM` (text-only, `gemma3_text`) and
`Gemma3ForConditionalGeneration` (`gemma3` with a `vision_config`); prompts go through the
folder's own chat template with `AutoTokenizer` / `AutoProcessor` (`apply_chat_template`), and
images through the folder's slow (PIL) image processor.

Generation is a plain decoding loop over the model's KV cache (greedy, or seeded sampling with
temperature / top-k / top-p on a `torch.Generator`); every step's log-probs are the float32
`log_softmax` of the raw logits the model produced at that step. `score` is one teacher-forced
forward over prompt + continuation; images attend both ways inside each image, as transformers
does when given `token_type_ids` (`causal_images=True` passes none: plain causal attention).
"""

from ._backend import HfBackend

__all__ = ["HfBackend"]
