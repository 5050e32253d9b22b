"""Benchmarks of castle-bridge: runtime throughput, rebirth burst and audit sweep, printed as ratios.

`python bench/run.py [--quick]` runs them all; each module also runs alone (`python -m bench.burst`).
"""
