"""The package version, read by setup.py and escort_tf."""

__version__ = "0.1.0"
