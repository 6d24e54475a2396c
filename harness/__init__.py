"""paritybench harness: suites, runs, metrics, reports and the `paritybench` CLI.

    from harness import CompareConfig, compare
    results = compare(CompareConfig(model="tiny-gemma3", out="out/x"))   # what `paritybench compare` runs
"""

from .comparison import compare, exit_code
from .config import BenchSettings, CompareConfig
from .results import BatchRun, ComparisonResults, ServingRun

__all__ = ["BatchRun", "BenchSettings", "CompareConfig", "ComparisonResults", "ServingRun", "compare", "exit_code"]
