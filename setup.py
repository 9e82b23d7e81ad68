"""Build the one native extension, bottle._ptyrelay, from src/_ptyrelay.pyx.

Everything else (metadata, packages) lives in pyproject.toml.
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("BOTTLE_NO_EXTENSIONS", "") not in ("", "0")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("bottle._ptyrelay", ["src/_ptyrelay.pyx"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
