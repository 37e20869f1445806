"""Framework workers of the benchmark suite (one process per framework)."""
