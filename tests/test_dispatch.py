"""Runtime CPU dispatch of the cell kernels (clstm._cell.dispatch_level).

On x86-64 Linux built by gcc against glibc the cell loops exist three times
(baseline, x86-64-v3, x86-64-v4) and the loader picks one per CPU; elsewhere
there is one portable build ("no-dispatch"). The level this CPU must get is
derived from its flags in /proc/cpuinfo, so an AVX-512 machine is checked to
run the AVX-512 clones and an AVX2 one the AVX2 clones.

CLSTM_EXPECT_DISPATCH overrides the derived level where /proc/cpuinfo does not
describe the CPU the code runs on: tools/check_wheel.sh runs the kernel tests
under qemu-user emulating a CPU without AVX2/AVX-512 (qemu shows the host's
/proc/cpuinfo) with CLSTM_EXPECT_DISPATCH=baseline; there the baseline clone
must be picked, and any instruction beyond the baseline would kill the run
(SIGILL). It also names the level for a build without dispatch (clang).
"""

import os
import platform
import sys

import pytest

from clstm import _cell

pytestmark = pytest.mark.kernel

# The ISA levels of the x86-64 psABI as /proc/cpuinfo spells their features
# (lzcnt is "abm", sse3 is "pni"); gcc's resolver checks the same sets.
X86_64_V2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
X86_64_V3 = X86_64_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
X86_64_V4 = X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def level_from_flags(flags):
    """The dispatch level gcc's target_clones resolver picks for a CPU with these flags."""
    if X86_64_V4 <= flags:
        return "x86-64-v4"
    if X86_64_V3 <= flags:
        return "x86-64-v3"
    return "baseline"


def cpu_flags(cpuinfo_text):
    """The feature flags common to every processor listed in /proc/cpuinfo."""
    sets = [set(line.split(":", 1)[1].split()) for line in cpuinfo_text.splitlines()
            if line.startswith("flags")]
    return set.intersection(*sets) if sets else set()


def _x86_64_glibc():
    return (sys.platform.startswith("linux") and platform.machine() == "x86_64"
            and platform.libc_ver()[0] == "glibc")


def expected_level():
    override = os.environ.get("CLSTM_EXPECT_DISPATCH")
    if override:
        return override
    if not _x86_64_glibc():
        return "no-dispatch"
    with open("/proc/cpuinfo") as f:
        return level_from_flags(cpu_flags(f.read()))


def test_dispatch_level_matches_the_cpu():
    assert _cell.dispatch_level() == expected_level()


@pytest.mark.parametrize("extra,level", [
    (set(), "baseline"),
    (X86_64_V2, "baseline"),
    (X86_64_V3 - {"movbe"}, "baseline"),
    (X86_64_V3, "x86-64-v3"),
    (X86_64_V4 - {"avx512vl"}, "x86-64-v3"),
    (X86_64_V4, "x86-64-v4"),
])
def test_level_from_flags(extra, level):
    assert level_from_flags({"fpu", "sse", "sse2"} | extra) == level


def test_cpu_flags_reads_every_processor():
    text = ("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\n"
            "processor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(text) == {"fpu", "avx2"}
