# The two commands of the README:
#   make demo   set up everything, then compare vLLM and JAX on the real gemma-3-270m (report in out/demo)
#               and on the tiny vision model's image prompts (out/demo/images)
#   make test   set up everything, then run the test suite
# Both are idempotent: the two environments are built once and reused (scripts/ensure_env.sh for
# the harness and the gemma library, scripts/ensure_vllm_env.sh for the vLLM server), and what the
# first vLLM server start builds is built once with them (scripts/warm_vllm.py).
.PHONY: demo test lint checks env bench clean

OUT ?= out/demo
# Test workers (pytest-xdist): one test file per worker at a time, the files that use the session's
# vision server as one unit, heaviest first (tests/conftest.py). Each worker holds its own session
# servers (about 2-3 GiB each); the two cores are busy throughout, so more workers only need more
# memory.
TEST_WORKERS ?= 2

# The environments are built side by side (the harness's and vLLM's are mostly downloading and
# unpacking; llama.cpp's is a native build from its sources, about 4.5 minutes of two cores the
# first time), then vLLM's first-start caches. With CHECK set (make test's lint), the checks run as soon as the
# harness environment exists, beside the rest (a cold mypy is about a minute of one core; from
# nothing the first test started about 50 s sooner, the two cores being busy throughout anyway).
# LLAMACPP=0 leaves llama.cpp's build out (make demo runs no llama.cpp side; from nothing the build
# was its long pole: 643 s instead of 336 s); make test and make env build it.
CHECK ?=
LLAMACPP ?= 1
env:
	@scripts/ensure_vllm_env.sh & vllm=$$!; \
	if [ "$(LLAMACPP)" = 1 ]; then scripts/ensure_llamacpp_env.sh & llama=$$!; else llama=; fi; \
	if ! scripts/ensure_env.sh; then wait $$vllm $$llama; exit 2; fi; \
	if [ -n "$(CHECK)" ]; then $(MAKE) --no-print-directory $(CHECK) & check=$$!; fi; \
	wait $$vllm && .venv/bin/python scripts/warm_vllm.py; ready=$$?; \
	if [ -n "$$llama" ]; then wait $$llama || ready=2; fi; \
	if [ -n "$(CHECK)" ]; then wait $$check || exit 2; fi; [ $$ready = 0 ]

# The real trained model (gemma-3-270m, float32) on plain-text prompts, measured; then the tiny
# vision model on the default suite's chat, image and audio prompts (parity and localisation only).
demo:
	@$(MAKE) --no-print-directory env LLAMACPP=0
	.venv/bin/paritybench compare --model gemma-3-270m --suite evals/plain.yaml --localize failing \
	  --num-prompts 8 --batch-sizes 1,8 --concurrency 1,8 --out $(OUT) --force
	.venv/bin/paritybench compare --model tiny-gemma3-vision --suite evals/default.yaml --localize failing \
	  --no-bench --out $(OUT)/images --force

test:
	@$(MAKE) --no-print-directory env CHECK=checks
	@scripts/ensure_chromium.sh
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 $(PYTEST_ARGS)

# ruff (lint + import order) and mypy (types), configured in pyproject.toml. mypy's cache lives
# beside the environments, shared by every clone (it checks each module's hash): 75 s -> a few s.
lint: env checks
checks:
	.venv/bin/ruff check backends harness evals tests benchmarks scripts
	MYPY_CACHE_DIR="$${PARITYBENCH_CACHE:-$$HOME/.cache/paritybench}/mypy-cache" .venv/bin/mypy

bench: env
	.venv/bin/python benchmarks/jax_compile_vs_steady.py

clean:
	rm -rf out .pytest_cache
