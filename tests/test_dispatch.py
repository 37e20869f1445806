"""Runtime CPU dispatch of the cell kernels (clstm._cell.dispatch_level).

On x86-64 Linux built by gcc against glibc the cell loops exist three times
(baseline, x86-64-v3, x86-64-v4) and the loader picks one per CPU; elsewhere
there is one portable build ("no-dispatch"). tools/check_wheel.sh runs the
kernel tests under qemu-user emulating a CPU without AVX2/AVX-512 with
CLSTM_EXPECT_DISPATCH=baseline: there the baseline clone must be picked, and
any instruction beyond the baseline elsewhere would kill the run (SIGILL).
"""

import os
import platform
import sys

import pytest

from clstm import _cell

pytestmark = pytest.mark.kernel

LEVELS = {"baseline", "x86-64-v3", "x86-64-v4"}


def test_dispatch_level_is_expected_one():
    expected = os.environ.get("CLSTM_EXPECT_DISPATCH")
    if not expected:
        pytest.skip("set CLSTM_EXPECT_DISPATCH to the level this CPU must get")
    assert _cell.dispatch_level() == expected


def test_dispatch_only_where_supported():
    level = _cell.dispatch_level()
    x86_64_glibc = (
        sys.platform.startswith("linux")
        and platform.machine() == "x86_64"
        and platform.libc_ver()[0] == "glibc"
    )
    if x86_64_glibc:
        assert level in LEVELS | {"no-dispatch"}  # no-dispatch: a clang build
    else:
        assert level == "no-dispatch"


def test_dispatch_level_is_stable():
    assert len({_cell.dispatch_level() for _ in range(3)}) == 1
