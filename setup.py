"""Builds the compiled parts where a C compiler exists: the row path
(casemate.storage._sqlite_rows) and the protocol core (casemate.protocol._core).

Everything else is in pyproject.toml.  Without a compiler (or if the build fails for any
other reason) the install goes on with the pure-Python twins, which are the reference:
it says so in one line, and `casemate serve` logs which ones it runs.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NOTICE = ("casemate: the compiled parts were not built ({}); installing the pure-Python "
          "ones (same results, slower)")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a failed build leaves the pure path."""

    def run(self) -> None:
        self.failures: list[str] = []
        try:
            super().run()
        except Exception as e:  # no compiler, no Cython, ...
            self.failures.append(str(e))
        if self.failures:  # one line, however many extensions failed
            print(NOTICE.format("; ".join(dict.fromkeys(self.failures))), file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            self.failures.append(str(e))


def extensions() -> list[Extension]:
    if os.environ.get("CASEMATE_PURE_INSTALL") or sys.implementation.name != "cpython" \
            or sys.platform == "win32":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        print(NOTICE.format(e), file=sys.stderr)
        return []
    exts = [Extension("casemate.storage._sqlite_rows", ["src/casemate/storage/_sqlite_rows.pyx"],
                      extra_compile_args=["-O2"]),
            Extension("casemate.protocol._core", ["src/casemate/protocol/_core.pyx"],
                      extra_compile_args=["-O2"])]
    try:
        return cythonize(exts, quiet=True, language_level=3)  # type: ignore[no-any-return]
    except Exception as e:
        print(NOTICE.format(e), file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
