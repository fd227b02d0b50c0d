"""Throughput and overhead benchmarks (see BENCHMARKS.md); run them as `python -m benchmarks.<name>`."""
