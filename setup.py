"""Build the clstm Cython kernels.

All Cython directives live here (no ``# cython:`` file headers). Set
``CLSTM_DEBUG_CYTHON=1`` to build with bounds checks, wraparound and
initialised-memoryview checks on, for the debug test run in ``.ci/run``.
"""
import os
import sys

from setuptools import Extension, setup

try:
    import numpy
    import scipy  # noqa: F401  (its cython_blas .pxd files are read at build time)
    from Cython import __version__ as cython_version
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - exercised by broken build envs
    sys.exit(
        f"clstm build error: {exc.name!r} is missing from the build environment. "
        "Building clstm from source needs Cython>=3.0.10, numpy and scipy "
        "(see [build-system] requires in pyproject.toml); install them or use a "
        "prebuilt wheel."
    )

if int(cython_version.split(".")[0]) < 3:  # pragma: no cover
    sys.exit(f"clstm build error: Cython>=3.0.10 is required, found {cython_version}.")

DEBUG = os.environ.get("CLSTM_DEBUG_CYTHON", "0") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "cdivision": not DEBUG,
    "cpow": True,
    "embedsignature": True,
}

if sys.platform == "win32":
    compile_args = ["/O2", "/fp:precise"]
else:
    # Never -march=native: wheels must run on the baseline ISA. The hot cell
    # loops get AVX2/AVX-512 clones through runtime dispatch instead.
    compile_args = ["-O3", "-fno-trapping-math"]
    if DEBUG:
        compile_args = ["-O1", "-g", "-fno-trapping-math"]

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]


def extension(name):
    return Extension(
        f"clstm.{name}",
        [f"src/clstm/{name}.pyx"],
        include_dirs=[numpy.get_include(), "src/clstm"],
        define_macros=macros,
        extra_compile_args=compile_args,
    )


setup(
    ext_modules=cythonize(
        [extension("_blas"), extension("_cell"), extension("_layer")],
        compiler_directives=directives,
        include_path=["src"],
    ),
)
