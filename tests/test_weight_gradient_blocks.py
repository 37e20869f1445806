"""Weight gradients summed in row blocks (clstm._scan._weight_gradient): where
float32 weight gradients run on SciPy's BLAS (builds without the small-GEMM
kernel, the smallest products, or set_wgrad_kernel(False)) and the BLAS has a
kernel for small products, they are summed over blocks of rows that fit it.
Every gradient must stay the gradient (the float64 network's, to float32
rounding), every block must count once (a dropped or doubled block is far
outside the tolerance), the blocks must not depend on the thread count, and
the block size on the BLAS in use only."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import clstm
import clstm._parallel as parallel
import clstm._rnn as rnn
from clstm import _scan

from _weight_gradients import CELLS, float32_and_reference, gradients

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build

B, T, H = 6, 9, 8


@pytest.fixture
def volume():
    """Weight gradients on the BLAS (the path with blocks); restore the
    module's block volume and kernel choice after a test that sets them."""
    saved = _scan.small_gemm_volume()
    kernel = _scan.set_wgrad_kernel(False)
    yield
    _scan.set_small_gemm_volume(saved)
    _scan.set_wgrad_kernel(kernel)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("name", list(CELLS))
def test_blocked_sums_are_the_gradient(volume, name, ragged):
    I = CELLS[name][2]
    net32, X, lengths, want = float32_and_reference(name, ragged, B, T, H)

    _scan.set_small_gemm_volume(0)
    one_call = gradients(net32, X, lengths)
    # the smallest blocks allowed (12 rows): 54 rows -> 5 blocks, the last of 6
    _scan.set_small_gemm_volume(12 * 4 * H * (I + H))
    blocked = gradients(net32, X, lengths)
    # the blocks were used: another summation order, other last bits somewhere
    assert any(not np.array_equal(blocked[k], one_call[k]) for k in one_call
               if k.startswith("weight"))
    # every parameter gradient has entries far from zero: a dropped or doubled
    # block of 12 of the 54 rows moves them by ~20 %, far outside the tolerance
    for k, w in want.items():
        scale = np.abs(w).max()
        np.testing.assert_allclose(blocked[k], w, rtol=0, atol=2e-5 * scale + 1e-6, err_msg=k)
        np.testing.assert_allclose(one_call[k], w, rtol=0, atol=2e-5 * scale + 1e-6, err_msg=k)


def test_a_dropped_block_would_be_seen(volume):
    """The tolerance above is tight enough: leaving out 12 of the 54 rows of
    the weight-gradient sum (what a skipped block would do) is far outside it."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, T, 3)).astype(np.float32)
    net = clstm.LSTM(3, H, random_state=0)
    full = gradients(net, X, None)["weight_hh_l0"]
    short = gradients(net, X[:, :7], None)["weight_hh_l0"]   # 12 rows fewer
    assert np.abs(full - short).max() > 1e-3 * np.abs(full).max()


@pytest.mark.parametrize("name", ["lstm-thin", "lstm-wide", "gru"])
def test_blocks_do_not_depend_on_the_thread_count(volume, monkeypatch, name):
    cls, options, I = CELLS[name]
    monkeypatch.setattr(parallel, "ROWS_PER_FIXED_PART", 4)
    monkeypatch.setattr(rnn, "FIXED_PART_MIN_WORK", 0)
    _scan.set_small_gemm_volume(12 * 4 * H * (I + H))
    X = np.random.default_rng(2).standard_normal((32, T, I)).astype(np.float32)
    results = []
    for n_jobs in (1, 2, 3):
        net = cls(I, H, random_state=0, n_jobs=n_jobs, **options)
        results.append(gradients(net, X, None))
    for other in results[1:]:
        for k, v in results[0].items():
            assert np.array_equal(other[k], v), k


def test_float64_gradients_are_never_blocked(volume):
    X = np.random.default_rng(3).standard_normal((B, T, 3))
    net = clstm.LSTM(3, H, random_state=0, dtype="float64")
    _scan.set_small_gemm_volume(0)
    one_call = gradients(net, X, None)
    _scan.set_small_gemm_volume(12 * 4 * H * (3 + H))
    again = gradients(net, X, None)
    for k, v in one_call.items():
        assert np.array_equal(again[k], v), k


def test_volume_is_read_from_the_blas_at_the_first_backward_not_at_import():
    """Loading the kernels does not ask threadpoolctl (an inference with an
    explicit n_jobs never does); the first backward does, and takes the
    BLAS's value."""
    code = textwrap.dedent("""
        import numpy as np
        import clstm, clstm._parallel as parallel
        from clstm import _scan
        net = clstm.LSTM(2, 3, random_state=0, n_jobs=1)
        X = np.ones((2, 4, 2), np.float32)
        net.run(X, keep_cache=False)
        assert parallel._controller is None, "threadpoolctl asked at load"
        out, _ = net.forward(X)
        net.backward(np.ones_like(out))
        assert _scan.small_gemm_volume() == parallel.blas_small_gemm_volume()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_volume_is_checked_and_returned(volume):
    previous = _scan.set_small_gemm_volume(123)
    assert _scan.small_gemm_volume() == 123
    assert _scan.set_small_gemm_volume(previous) == 123
    with pytest.raises(ValueError, match=">= 0"):
        _scan.set_small_gemm_volume(-1)


class _Lib:
    def __init__(self, architecture, internal_api="openblas"):
        self.architecture, self.internal_api = architecture, internal_api


class _Controller:
    def __init__(self, *libs):
        self.lib_controllers = list(libs)


@pytest.mark.parametrize("libs,expected", [
    ((_Lib("SkylakeX"),), 1_000_000),
    ((_Lib("Haswell"),), 0),
    ((_Lib("Zen"),), 0),
    ((_Lib("SkylakeX", internal_api="mkl"),), 0),
    ((_Lib("SkylakeX"), _Lib("SkylakeX")), 0),      # which one the kernels call: unknown
    ((), 0),
])
def test_block_volume_follows_the_blas_core_type(monkeypatch, libs, expected):
    monkeypatch.setattr(parallel, "_blas_controller", lambda: _Controller(*libs))
    assert parallel.blas_small_gemm_volume() == expected


def test_block_volume_without_a_blas_view(monkeypatch):
    def fail():
        raise RuntimeError("no threadpoolctl")
    monkeypatch.setattr(parallel, "_blas_controller", fail)
    assert parallel.blas_small_gemm_volume() == 0
