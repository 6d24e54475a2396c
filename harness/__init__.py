"""paritybench harness: suites, runs, metrics, reports and the `paritybench` CLI."""
