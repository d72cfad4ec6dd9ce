"""Builds the compiled row path (casemate.storage._sqlite_rows) where a C compiler exists.

Everything else is in pyproject.toml.  Without a compiler (or if the build fails for any
other reason) the install goes on with the pure-Python row path, which is the reference:
it says so in one line, and `casemate serve` logs which path it runs.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NOTICE = ("casemate: the compiled row path was not built ({}); installing the pure-Python "
          "one (same results, slower bulk fetch)")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a failed build leaves the pure path."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, no Cython, ...
            print(NOTICE.format(e), file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            print(NOTICE.format(e), file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("CASEMATE_PURE_INSTALL") or sys.implementation.name != "cpython" \
            or sys.platform == "win32":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        print(NOTICE.format(e), file=sys.stderr)
        return []
    ext = Extension("casemate.storage._sqlite_rows", ["src/casemate/storage/_sqlite_rows.pyx"],
                    extra_compile_args=["-O2"])
    try:
        return cythonize([ext], quiet=True, language_level=3)  # type: ignore[no-any-return]
    except Exception as e:
        print(NOTICE.format(e), file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
