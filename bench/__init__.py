"""Benchmarks of the PyTorch engine on a GPU: `python -m bench.run --help`."""
