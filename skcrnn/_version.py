"""The package's version: one home, read by ``skcrnn.__version__``, setup.py and saved files."""

__version__ = "0.2.0"
