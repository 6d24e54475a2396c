"""The gemma library's private names, in one place: the one module to touch on a gemma upgrade.

gemma 3.3 keeps a few things paritybench needs in private modules (`_token_utils`,
`_attention_mask`, `_types`, `_preprocess`); every use goes through the functions here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def soft_token_placeholder() -> int:
    """The id gemma puts at image soft-token positions before the vision tower fills them."""
    from gemma.gm.vision import _token_utils

    return int(_token_utils.SOFT_TOKEN_PLACEHOLDER)


def expand_image_tokens(ids: list[int], num_images: int, tokens_per_image: int) -> np.ndarray:
    """`ids` with each <start_of_image> expanded as gemma expands it: "\\n\\n" <start_of_image>
    soft tokens <end_of_image> "\\n\\n" (soft tokens as `soft_token_placeholder()`)."""
    import jax.numpy as jnp
    from gemma.gm.vision import _token_utils

    out = _token_utils.add_extra_tokens_for_images(
        jnp.asarray([ids], jnp.int32), max_num_images=num_images, num_tokens_per_image=tokens_per_image)
    return np.asarray(out)[0]


def tokens_with_images(tokens: Any, images: Any, input_config: Any) -> Any:
    """The (B, L') token array gemma's model sees once images are inserted (soft tokens are -2)."""
    from gemma.gm.utils import _types

    return _types.Input(text=tokens, images=images, config=input_config).tokens_with_mm


def attention_mask(input_mask: Any, bidirectional_mask: Any = None) -> Any:
    """gemma's causal mask, bidirectional where `bidirectional_mask` is set (inside images)."""
    from gemma.gm.utils import _attention_mask

    return _attention_mask.make_causal_bidirectional_attention_mask(input_mask, bidirectional_mask=bidirectional_mask)


def preprocess_image(image: Any, size: int) -> Any:
    """What gemma feeds its vision tower for a float HxWx3 image in [0, 255]: a bilinear,
    antialiased resize in float to size x size, normalised to [-1, 1]."""
    from gemma.gm.vision import _preprocess

    return _preprocess.pre_process_image(image, image_shape=(size, size, 3))


def walk_layers(m: Any, tokens: Any, images: Any, positions: Any, mask: Any, reference: Any = None) -> Any:
    """A gemma `Transformer` method (run it with `model.apply(..., method=walk_layers)`): the residual
    stream at every depth, (B, N + 2, L', D) = [embeddings with images merged in, after each block,
    final norm], over the sequence with images inserted. With `reference` (B, N + 2, L', D), each
    block and the final norm get that stream as input instead of the one before them (a local pass)."""
    import jax.numpy as jnp

    inputs = m._encode_and_get_inputs(tokens=tokens, images=images, positions=positions, attention_mask=mask)
    x = inputs.embeddings
    rows = [x]
    for i, block in enumerate(m.blocks):
        _, x = block(x if reference is None else reference[:, i].astype(x.dtype), positions, None, mask)
        rows.append(x)
    n = len(m.blocks)
    rows.append(m.final_norm(x if reference is None else reference[:, n].astype(x.dtype)))
    return jnp.stack(rows, axis=1)
