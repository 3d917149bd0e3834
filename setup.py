"""Build entry point.

All metadata lives in ``pyproject.toml``. This file declares the optional native extension
``diffcut_engine._native``: the C++ core in ``csrc/`` with pybind11 bindings (``graph_backend="native"``). It needs
a C++17 compiler and pybind11 (a build requirement in ``pyproject.toml``); it links no BLAS (it calls SciPy's at
run time). Where it cannot be built, the install goes on without it (``optional=True``): the engine then runs
the numpy graph stage, and asking for ``graph_backend="native"`` says that the extension is missing. Set
``DIFFCUT_NO_NATIVE=1`` to skip it.
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup


def native_extensions():
    if os.environ.get("DIFFCUT_NO_NATIVE", "") not in ("", "0"):
        return []
    try:
        import pybind11
    except ImportError:  # a build without the declared build requirements (--no-build-isolation): pure Python
        return []
    if sys.platform == "win32":
        flags = ["/std:c++17", "/O2", "/fp:precise"]
    else:
        flags = ["-std=c++17", "-O3", "-g0", "-ffp-contract=off", "-fvisibility=hidden"]
    sources = sorted(glob("csrc/src/*.cpp")) + ["csrc/python/bindings.cpp"]
    headers = sorted(glob("csrc/src/*.h")) + sorted(glob("csrc/include/diffcut/*"))  # a changed header rebuilds
    libraries = ["dl"] if sys.platform.startswith("linux") else []  # dladdr/dlsym (in libc from glibc 2.34)
    return [Extension("diffcut_engine._native", sources=sources, depends=headers, libraries=libraries,
                      include_dirs=[pybind11.get_include(), "csrc/include", "csrc/src"],
                      language="c++", extra_compile_args=flags, optional=True)]


setup(ext_modules=native_extensions())
