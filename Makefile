# The two commands of the README:
#   make demo   set up everything, then run the main job on the embedded tiny model
#   make test   set up everything, then run the test suite
# Both are idempotent: the environment is built once (scripts/ensure_env.sh) and reused.
.PHONY: demo test env bench clean

OUT ?= out/demo

env:
	@scripts/ensure_env.sh

demo: env
	.venv/bin/paritybench demo --out $(OUT)

test: env
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: env
	.venv/bin/python benchmarks/jax_compile_vs_steady.py

clean:
	rm -rf out .pytest_cache
