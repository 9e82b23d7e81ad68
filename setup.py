"""Build the one native extension, bottle._ptyrelay, from src/_ptyrelay.pyx.

Everything else (metadata, packages) lives in pyproject.toml. Environment:
  BOTTLE_NO_EXTENSIONS=1  build no extension: a pure-Python install, on purpose (slow relay).
  BOTTLE_LIMITED_API=1    build against the stable ABI (abi3, CPython >= 3.10) instead of the
                          running Python's own ABI.
"""

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

if os.name == "nt":
    # Fail while pip is still asking for build requirements, not at the user's first `bottle`.
    sys.exit(
        "agent-bottle does not support Windows: its terminal relay needs POSIX pseudo-terminals "
        "(pty), which Windows lacks. Install it on Linux or macOS, or inside WSL."
    )


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("BOTTLE_NO_EXTENSIONS")
# The stable ABI has no free-threaded flavour before Python 3.15, so 3.14t stays version-specific.
LIMITED_API = _flag("BOTTLE_LIMITED_API") and not sysconfig.get_config_var("Py_GIL_DISABLED")

PURE_HINT = """
To install the slower pure-Python relay ON PURPOSE instead, skip the extension:

    BOTTLE_NO_EXTENSIONS=1 pip install agent-bottle

(set the same variable at run time to force the pure relay in an existing install)."""


class FailedBuild(CCompilerError):
    """The extension could not be built; the message says how to go without it."""


def _fail(reason: str) -> FailedBuild:
    bar = "*" * 78
    return FailedBuild(
        f"\n{bar}\nagent-bottle: building the native PTY relay (bottle._ptyrelay) FAILED:\n"
        f"    {reason}\n"
        "A C compiler and the Python headers are needed to build from source; prebuilt wheels "
        f"need neither.\n{PURE_HINT}\n{bar}"
    )


class BuildExt(build_ext):
    """build_ext that cythonizes at build time and turns any failure into one loud error."""

    def run(self) -> None:
        try:
            from Cython.Build import cythonize
        except ImportError as exc:
            raise _fail(f"Cython is not installed ({exc}); it is a build requirement") from exc
        # Cythonizing here, not at import, keeps generated C out of the sdist: the sdist ships
        # the .pyx and every build regenerates the C from it.
        try:
            translated = cythonize(
                self.extensions, compiler_directives={"language_level": "3"}, quiet=True
            )
        except Exception as exc:  # Cython's CompileError does not derive from distutils'.
            raise _fail(f"Cython could not translate src/_ptyrelay.pyx: {exc}") from exc
        # Keep setuptools' own (finalized) Extension objects; only their sources become C.
        c_sources = {ext.name: ext.sources for ext in translated}
        for ext in self.extensions:
            ext.sources = c_sources[ext.name]
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as exc:
            if isinstance(exc, FailedBuild):
                raise
            raise _fail(str(exc) or type(exc).__name__) from exc


ext_modules = []
options = {}
if not NO_EXTENSIONS:
    macros = [("Py_LIMITED_API", "0x030A0000")] if LIMITED_API else []
    ext_modules.append(
        Extension(
            "bottle._ptyrelay",
            ["src/_ptyrelay.pyx"],
            define_macros=macros,
            py_limited_api=LIMITED_API,
            # The recording's writer thread: pthread_create lives in libpthread before glibc
            # 2.34 (manylinux_2_28 has 2.28), so link it rather than hope the interpreter did.
            extra_compile_args=["-pthread"],
            extra_link_args=["-pthread"],
        )
    )
    if LIMITED_API:
        options["bdist_wheel"] = {"py_limited_api": "cp310"}

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt}, options=options)
