"""Multi-tenant scheduling: several models sharing one GPU (Yu et al., ICCAD 2021).

``plan`` holds the unified schedule representation a multi-tenant run executes;
``baselines`` the plain runtimes (sequential, multi-stream, breadth-first and
depth-first interleavings); ``search`` the runtime-aware search guided by the learned
``costmodel``; ``metrics`` and ``outputs`` what a run reports and draws. The simulation
itself is :mod:`simgpu.sim.tenants`. These are deliberately not in ``schedulers/``,
whose modules are auto-discovered as single-graph schedulers.
"""
