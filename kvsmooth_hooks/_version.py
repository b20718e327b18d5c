"""The package version (its own module, so that config.py needs no import of the package root)."""

__version__ = "0.1.0"
