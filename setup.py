"""Build entry point.

All metadata lives in ``pyproject.toml``. This file stays so that ``python setup.py``-style tooling keeps working
and so that the optional native extension from ``csrc/`` (C++ core with pybind11 bindings, a later milestone) has
a place to be declared. A pure-Python install never needs a compiler.
"""

from setuptools import setup

setup()
