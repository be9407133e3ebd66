"""xos: a grid operating-system layer for Linux."""

__version__ = "0.1.0"
