"""Speed benchmarks: `speechswarm bench train|transcribe` (see benchmark/train.py, transcribe.py)."""
