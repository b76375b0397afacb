"""simgpu: a discrete-event GPU simulator for inter-operator scheduling."""

__version__ = "0.1.0"
