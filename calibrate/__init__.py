"""Calibration against real GPUs (probe, microbenchmarks, trace import, fit).

This package is filled by the calibration issue; the simulator reads its output files
(GPU JSON overrides and kernel tables) through simgpu.hardware and simgpu.kernels.
"""
