"""Benchmarks: speed, utilization and resources, run through ``recaccel bench``."""
