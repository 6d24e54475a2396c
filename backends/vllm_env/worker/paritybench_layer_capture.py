"""vLLM worker extension: the residual stream after every decoder layer, for one request.

Runs inside the vLLM environment (never imported by the harness). A managed server started with
`layer_capture=True` has this folder on its PYTHONPATH, `VLLM_SERVER_DEV_MODE=1` and
`--worker-extension-cls paritybench_layer_capture.LayerCapture`; the harness then calls, through
`POST /collective_rpc`:

    pb_capture_begin(reference_b64="")   hooks on (reference: feed each layer that stream instead)
    ... one request, max_tokens 1, a fresh cache_salt (a cached prefix would skip its layers) ...
    pb_capture_end()                     hooks off; {"shape": [...], "npz_b64": ...}

Rows: [embedding (the first layer's input, images merged), after layer 0 .. N-1, final norm], each
(tokens, hidden) in float32. vLLM fuses each residual add into the next layer's input norm: a
layer returns (branch output, stream before the add), so the stream after layer i is their sum;
the final norm returns (normed, stream). Sums are taken and copied inside the hook (a fused kernel
may overwrite its inputs in place). Chunked prefills are concatenated.
"""

import base64
import io


def _core(model):
    """The decoder stack (`embed_tokens`, `layers`, `norm`) of a Gemma 3 model, text or vision."""
    lm = getattr(model, "language_model", model)
    core = getattr(lm, "model", lm)
    if not hasattr(core, "layers") or not hasattr(core, "norm"):
        raise RuntimeError(f"layer capture: {type(model).__name__} has no decoder stack with .layers and .norm")
    if "Gemma3n" in type(core).__name__:
        raise RuntimeError("layer capture: Gemma 3n keeps several AltUp streams per layer; not supported")
    return core


def _npz(**arrays):
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode()


class LayerCapture:
    def pb_capture_begin(self, reference_b64=""):
        import numpy as np
        import torch

        model = self.get_model()
        self.pb_capture_remove()
        core = _core(model)
        ref = None
        if reference_b64:
            ref = torch.from_numpy(np.load(io.BytesIO(base64.b64decode(reference_b64)))["hs"])
        rec = {"emb": [], "layers": [[] for _ in core.layers], "norm": [], "seen": 0}

        def fed(row, hidden):  # the reference stream for this chunk's tokens (own rows past its end)
            r = ref[row, rec["seen"]: rec["seen"] + hidden.shape[0]].to(device=hidden.device, dtype=hidden.dtype)
            if r.shape[0] < hidden.shape[0]:
                r = torch.cat([r, hidden[r.shape[0]:]])
            return r.clone()

        def pre(i):
            def hook(mod, args):
                hidden = args[1]
                if i == 0:
                    rec["emb"].append(hidden.detach().float().clone())
                if ref is None:
                    return None
                r = fed(i, hidden)  # row i: the stream before layer i
                return (args[0], r, torch.zeros_like(r)) + tuple(args[3:])
            return hook

        def post(i):
            def hook(mod, args, out):
                rec["layers"][i].append((out[0].float() + out[1].float()).detach().clone())
            return hook

        def norm_pre(mod, args):
            if ref is None:
                return None
            r = fed(len(core.layers), args[0])  # the stream after the last layer
            return (r, torch.zeros_like(r)) + tuple(args[2:])

        def norm_post(mod, args, out):
            rec["norm"].append(out[0].detach().float().clone())
            rec["seen"] += out[0].shape[0]

        hs = [layer.register_forward_pre_hook(pre(i)) for i, layer in enumerate(core.layers)]
        hs += [layer.register_forward_hook(post(i)) for i, layer in enumerate(core.layers)]
        hs += [core.norm.register_forward_pre_hook(norm_pre), core.norm.register_forward_hook(norm_post)]
        model._pb_capture = (rec, hs)
        return {"layers": len(core.layers)}

    def pb_capture_remove(self):
        model = self.get_model()
        rec_hs = getattr(model, "_pb_capture", None)
        if rec_hs:
            for h in rec_hs[1]:
                h.remove()
        model._pb_capture = None
        return {}

    def pb_capture_end(self):
        import torch

        model = self.get_model()
        rec_hs = getattr(model, "_pb_capture", None)
        if not rec_hs:
            raise RuntimeError("layer capture: pb_capture_begin was not called")
        rec = rec_hs[0]
        self.pb_capture_remove()
        if not rec["emb"]:
            raise RuntimeError("layer capture: no forward pass ran while the hooks were on")
        rows = [torch.cat(rec["emb"])] + [torch.cat(r) for r in rec["layers"]] + [torch.cat(rec["norm"])]
        hs = torch.stack(rows).cpu().numpy()
        return {"shape": list(hs.shape), "npz_b64": _npz(hs=hs)}
