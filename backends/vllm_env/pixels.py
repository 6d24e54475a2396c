"""Print-free helper run by the vLLM environment's interpreter (never imported by the harness):
the pixels vLLM's image processor makes of some images, for the image-preprocessing parity check.

    .venv-vllm/bin/python backends/vllm_env/pixels.py HF_DIR

The processor is loaded once (AutoImageProcessor, as vLLM loads it: the default fast/torchvision
variant); then each line on stdin names two files, "IN.npz OUT.npz", and the helper answers one
line, "ok" or "error: ...", when OUT.npz is written. It ends when stdin closes (its parent ended).
IN.npz holds uint8 HxWx3 arrays img0, img1, ...; OUT.npz gets for each `resized{i}` (uint8 HxWx3,
after resizing, before rescaling) and `pixels{i}` (float32 HxWx3, what the vision tower receives).
"""

import sys

import numpy as np
from transformers import AutoImageProcessor


def convert(proc, src: str, dst: str) -> None:
    images = np.load(src)
    out = {}
    for i in range(len(images.files)):
        img = images[f"img{i}"]
        resized = proc(images=img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
        pixels = proc(images=img, return_tensors="np")["pixel_values"][0]
        out[f"resized{i}"] = np.clip(np.rint(np.transpose(resized, (1, 2, 0))), 0, 255).astype(np.uint8)
        out[f"pixels{i}"] = np.transpose(pixels, (1, 2, 0)).astype(np.float32)
    out["processor"] = np.array(type(proc).__name__)
    np.savez(dst, **out)


def main(hf_dir: str) -> None:
    answers, sys.stdout = sys.stdout, sys.stderr  # what a library prints goes to the log, not among the answers
    proc = AutoImageProcessor.from_pretrained(hf_dir)
    for line in sys.stdin:
        try:
            src, dst = line.split()
            convert(proc, src, dst)
            answer = "ok"
        except Exception as e:  # one bad request is answered, the helper goes on
            answer = "error: " + (str(e).splitlines() or [type(e).__name__])[0]
        answers.write(answer + "\n")
        answers.flush()


if __name__ == "__main__":
    main(sys.argv[1])
