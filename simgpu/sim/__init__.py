"""The SimPy engine."""
