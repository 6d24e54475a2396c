"""paritybench harness: suites, runs, metrics, reports and the `paritybench` CLI.

    from harness import CompareConfig, compare
    results = compare(CompareConfig(model="tiny-gemma3", out="out/x"))   # what `paritybench compare` runs
"""

from .comparison import compare, exit_code
from .config import BenchSettings, CompareConfig

__all__ = ["BenchSettings", "CompareConfig", "compare", "exit_code"]
