"""Build the clstm Cython kernels.

All Cython directives live here (no ``# cython:`` file headers). Set
``CLSTM_DEBUG_CYTHON=1`` to build with bounds checks, wraparound and
initialised-memoryview checks on, for the debug test run in ``.ci/run``.

Everything else (name, version, dependencies, wheels) is in pyproject.toml.
"""
import glob
import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

CYTHON_MIN = (3, 0, 10)
HELP = (
    "Prebuilt wheels need none of this: `pip install --only-binary=clstm-learn "
    "clstm-learn`. To build from source install a C compiler and the build "
    "requirements listed under [build-system] in pyproject.toml."
)


def fail(message):
    sys.exit(f"\nclstm build error: {message}\n{HELP}\n")


def version_tuple(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# --- Build environment ----------------------------------------------------------
try:
    import numpy
    import scipy
    from Cython import __version__ as cython_version
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - exercised by broken build envs
    fail(f"{exc.name!r} is missing from the build environment (clstm needs "
         "Cython>=3.0.10, numpy and scipy at build time).")

if version_tuple(cython_version) < CYTHON_MIN:
    fail(f"Cython>={'.'.join(map(str, CYTHON_MIN))} is required, found {cython_version}.")

if not os.path.exists(os.path.join(os.path.dirname(scipy.__file__), "linalg", "cython_blas.pxd")):
    fail(f"scipy {scipy.__version__} has no linalg/cython_blas.pxd (need scipy>=1.11).")

DEBUG = os.environ.get("CLSTM_DEBUG_CYTHON", "0") not in ("", "0")

# --- Directives and flags -------------------------------------------------------
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
elif DEBUG:
    compile_args = ["-O1", "-g", "-fno-trapping-math"]
else:
    # Never -march=native: wheels must run on the baseline ISA. The hot cell
    # loops get AVX2/AVX-512 clones through runtime dispatch instead. -g0
    # drops the interpreter's -g (debug info would triple the wheel's size).
    compile_args = ["-O3", "-fno-trapping-math", "-g0"]

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]


# The scan starts POSIX threads (_threads.h): -pthread where the compiler has it.
thread_args = [] if sys.platform == "win32" else ["-pthread"]


# The kernel headers include each other (_cell_kernels.h includes _cell_rows.h),
# which Cython's own dependency tracking does not follow: every extension is
# rebuilt when any of them changes.
KERNEL_HEADERS = sorted(glob.glob("src/clstm/*.h"))


# The optimizer steps must round each operation as NumPy does (bit-identical
# results): no contraction into fused multiply-adds (baseline on aarch64).
# No errno from sqrt lets its loop vectorise.
EXACT_ARITHMETIC = {"_optimizer_steps": [] if sys.platform == "win32"
                    else ["-ffp-contract=off", "-fno-math-errno"]}


def extension(name):
    threads = thread_args if name == "_scan" else []
    return Extension(
        f"clstm.{name}",
        [f"src/clstm/{name}.pyx"],
        depends=KERNEL_HEADERS,
        include_dirs=[numpy.get_include(), "src/clstm"],
        define_macros=macros,
        extra_compile_args=compile_args + threads + EXACT_ARITHMETIC.get(name, []),
        extra_link_args=threads,
    )


# --- Compiler check and link hygiene --------------------------------------------
class BuildExt(build_ext):
    """build_ext that says plainly when there is no compiler, and links no RPATH."""

    def build_extensions(self):
        self._check_compiler()
        if hasattr(self.compiler, "linker_so"):
            # An interpreter built with -Wl,-rpath (pyenv, conda) passes it on
            # to every extension: a RUNPATH into the build machine.
            self.compiler.linker_so = [
                arg for arg in self.compiler.linker_so
                if not arg.startswith(("-Wl,-rpath", "-Wl,-R", "-Wl,--enable-new-dtags"))
            ]
        super().build_extensions()

    def _check_compiler(self):
        """Compile two one-line probes: plain C, then C including Python.h."""
        tmp = os.path.join(self.build_temp, "probe")
        os.makedirs(tmp, exist_ok=True)
        probes = [
            ("probe_c.c", "int main(void) { return 0; }\n", "no working C compiler"),
            ("probe_py.c", "#include <Python.h>\n", "the Python development headers "
             "(Python.h) are missing (Debian/Ubuntu: apt-get install python3-dev)"),
        ]
        for filename, source, problem in probes:
            path = os.path.join(tmp, filename)
            with open(path, "w") as f:
                f.write(source)
            try:
                self.compiler.compile([path], output_dir=tmp)
            except (CCompilerError, ExecError, PlatformError, OSError) as exc:
                cc = (getattr(self.compiler, "compiler_so", None) or ["MSVC"])[0]
                fail(f"{problem}: the compiler `{cc}` could not compile a one-line "
                     f"test file ({type(exc).__name__}; its output is above).")


setup(
    ext_modules=cythonize(
        [extension("_blas"), extension("_cell"), extension("_scan"), extension("_stream"),
         extension("_embedding"),
         extension("_head_losses"), extension("_optimizer_steps")],
        compiler_directives=directives,
        include_path=["src"],
    ),
    cmdclass={"build_ext": BuildExt},
)
