"""simplemirror: keep a full, verified local copy of a Python package index."""

__version__ = "0.1.0"
