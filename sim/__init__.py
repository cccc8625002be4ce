"""Simulation infrastructure: Verilator builds, cocotb runs and stream bus models."""
