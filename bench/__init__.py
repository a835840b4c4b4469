"""Benchmarks; each writes its results, with machine, versions and date, to bench/results/."""
