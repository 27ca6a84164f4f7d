"""The benchmark harness behind ``benchmarks/bench.py`` (see benchmarks/README.md for the layout)."""
