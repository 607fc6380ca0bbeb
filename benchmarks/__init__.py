"""Benchmark suites for mixkernels (``python -m benchmarks.run``) and their shared harness."""
