"""Hidden sizes that are not a whole number of vectors: the units past a row's
last whole vector (the cell's gathered tails, _cell_rows.h) and the small
GEMM's last panel (_packed_gemm.h) must give the bits the same units get in
the vector body. The oracle: the same network with its hidden size padded to
whole vectors by units whose weights are all zero (their h stays 0, so they
add exact zeros to every sum, after the real units' terms)."""

import numpy as np
import pytest

import clstm

pytestmark = pytest.mark.kernel

CELLS = {"lstm": (clstm.LSTM, {}), "peephole": (clstm.LSTM, {"peephole": True}),
         "coupled": (clstm.LSTM, {"coupled_gates": True}), "gru": (clstm.GRU, {})}


def _padded_params(small, H, Hp):
    """small's parameters at hidden size Hp: each gate block's rows and
    weight_hh's columns past H zero."""
    out = {}
    for name, value in small.state_dict().items():
        blocks = value.shape[0] // H
        grown = np.zeros((blocks * Hp,) + value.shape[1:], value.dtype)
        for q in range(blocks):
            grown[q * Hp:q * Hp + H] = value[q * H:(q + 1) * H]
        if name.startswith("weight_hh"):
            wide = np.zeros((blocks * Hp, Hp), value.dtype)
            wide[:, :H] = grown
            grown = wide
        out[name] = grown
    return out


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("H, Hp", [(50, 64), (7, 16), (100, 112)])
@pytest.mark.parametrize("B", [3, 13, 32])
def test_tail_units_equal_the_vector_body(cell, H, Hp, B):
    cls, kwargs = CELLS[cell]
    I = 3
    small = cls(I, H, random_state=4, n_jobs=1, **kwargs)
    big = cls(I, Hp, random_state=0, n_jobs=1, **kwargs)
    big.load_state_dict(_padded_params(small, H, Hp))
    X = np.random.default_rng(B + H).standard_normal((B, 12, I)).astype(np.float32)
    for keep_cache in (True, False):           # the training forward and inference
        out, state = small.run(X, keep_cache=keep_cache)
        out_p, state_p = big.run(X, keep_cache=keep_cache)
        np.testing.assert_array_equal(out, out_p[..., :H])
        for s, s_p in zip(state, state_p):
            np.testing.assert_array_equal(s, s_p[..., :H])
            assert not s_p[..., H:].any()
