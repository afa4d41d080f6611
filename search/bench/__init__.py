"""Benchmarks: the figures the README quotes, apart from the product they measure.

`python -m search.bench` runs them (see `suite`); `python -m search.bench.throughput` measures
training throughput alone. Nothing in `search`, `spaces` or `objectives` imports this package.
"""
