"""Benchmarks of odejax against its peers; run ``python -m benchmarks.run --help``."""
