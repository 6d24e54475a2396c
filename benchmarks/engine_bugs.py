# mypy: check-untyped-defs
"""The catalogue table of docs/engine-bugs.md, measured: every documented Gemma engine bug of
`evals.engine_bugs`, planted on a model of paritybench's own, run through parity; one row each
with the verdict, the cause named (* confirmed), where it was placed and the gap.

    .venv/bin/python benchmarks/engine_bugs.py                     # every case, about 90 s on 2 cores
    .venv/bin/python benchmarks/engine_bugs.py --cases doubled-bos # some
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals import engine_bugs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="", help="comma-separated case keys (default: all)")
    args = ap.parse_args()
    keys = [k for k in args.cases.split(",") if k] or list(engine_bugs.CASES)
    unknown = [k for k in keys if k not in engine_bugs.CASES]
    if unknown:
        sys.exit(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(engine_bugs.CASES)}")
    root = Path(tempfile.mkdtemp(prefix="pb-bugs-"))
    try:
        own = engine_bugs.build_own(root)
        print("| case | upstream | verdict | cause named (* confirmed) | where | max abs dlogprob | s |")
        print("|---|---|---|---|---|---|---|")
        for key in keys:
            case = engine_bugs.CASES[key]
            t0 = time.perf_counter()
            report = engine_bugs.run(case, own, root)
            p = report.prompts[0]
            named = ", ".join(c.name + ("*" if c.explains else "") for c in p.causes if c.name != "logprobs")
            gap = f"{p.agreement.max_abs_dlogprob:.3g}" if p.agreement and p.agreement.positions else "-"
            print(f"| {case.title} | {case.upstream} | {report.verdict} | {named or '-'} | "
                  f"{engine_bugs.where(case, report) or '-'} | {gap} | {time.perf_counter() - t0:.1f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
