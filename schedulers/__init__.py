"""Schedulers: one module each, registered by name (see schedulers.base)."""
