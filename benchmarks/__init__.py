"""Benchmarks (not part of the installed package): speed against a PyTorch reference, profiles."""
