"""Speed measurements (results in docs/benchmarks.md); run each as python -m benchmarks.NAME."""
