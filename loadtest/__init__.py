"""Load tests and benchmarks for omnigrid (not part of the installed package)."""
