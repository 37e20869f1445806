"""Oracles for the NumPy reference of the cell family (clstm._reference).

The reference is the oracle of the compiled cells (tests/test_cell_family.py);
here it is checked against its own oracles:

- central finite differences in float64 for every LSTM variant (any
  combination of proj_size, peephole, coupled_gates, layer_norm) and the GRU:
  every parameter, X, h0 and c0, ragged lengths, bidirectional, two layers;
- the stored framework results (tests/fixtures/cells/*.npz, torch and
  onnxruntime; tests/fixtures/torch_lstm_*.npz for the plain LSTM), no
  framework needed;
- live torch.nn.GRU and torch.nn.LSTM(proj_size) (packed, bidirectional,
  outputs and every gradient) and onnxruntime's LSTM (P, input_forget) and
  GRU (linear_before_reset=1) operators, skipped without them;
- layer norm, which no framework ships in an LSTM: a step written out by hand
  and invariances that show which vectors are normalised.

Errors against frameworks are normwise relative: max|ours - theirs| / max|theirs|.
"""

import itertools
import pathlib

import numpy as np
import pytest

from clstm._reference import (
    lstm_step_forward,
    reference_gru_backward,
    reference_gru_forward,
    reference_lstm_backward,
    reference_lstm_forward,
    reference_network_backward,
    reference_network_forward,
)

from _cell_fixture_maker import MAKER

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CELL_FIXTURES = sorted((FIXTURES / "cells").glob("*.npz"))
LSTM_FIXTURES = sorted(FIXTURES.glob("torch_lstm_*.npz"))
# float32 results: torch's float32 rounding, onnxruntime's float32 activations
RTOL = {"float64": 1e-10, "float32": 1e-5}



def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _as64(arrays):
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in arrays.items()}


def _reference_results(arrays, cell, with_backward=True):
    """The reference on a fixture's arrays, keyed like the fixtures."""
    names = ("h", "c") if cell == "lstm" else ("h",)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    batch = arrays["X"].shape[0]
    states = tuple(arrays.get(f"{s}0") for s in names)
    out, final, cache = reference_network_forward(params, arrays["X"], states,
                                                  arrays.get("lengths"), cell=cell)
    result = {"out": out, **{f"{s}_n": f for s, f in zip(names, final)}}
    if with_backward:
        grad_X, grads = reference_network_backward(
            arrays["grad_out"], tuple(arrays[f"grad_{s}_n"] for s in names), cache)
        result["grad_X"] = grad_X
        result.update({f"grad_{s}0": grads.pop(s + "0") for s in names})
        result.update({"grad/" + k: v for k, v in grads.items()})
    assert all(v.shape[0] == batch for k, v in result.items() if k in ("out", "grad_X"))
    return result


def _assert_parity(ours, theirs, rtol):
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    errors = {k: _rel_err(ours[k], theirs[k]) for k in sorted(theirs)}
    bad = {k: e for k, e in errors.items() if not e <= rtol}
    assert not bad, f"relative errors above {rtol}: {bad}"


# =====================================================================================
# Central finite differences (float64)
# =====================================================================================

B, T, I, H, P = 3, 4, 2, 3, 2
EPS = 1e-6
LENGTHS = [2, 4, 1]                     # unsorted, includes 1 and T

LSTM_VARIANTS = [dict(proj_size=p, peephole=ph, coupled_gates=cg, layer_norm=ln)
                 for p, ph, cg, ln in itertools.product((0, P), *[(False, True)] * 3)]


def _variant_id(options):
    parts = [name for name, key in (("proj", "proj_size"), ("peephole", "peephole"),
                                    ("cifg", "coupled_gates"), ("ln", "layer_norm"))
             if options.get(key)]
    return "-".join(parts) or "plain"


def make_params(cell, num_layers, bidirectional, rng, input_size=I, hidden_size=H, **options):
    """Random parameters under the contract names; layer-norm gains near 1.

    Scaled so that the gates leave their linear regime (a weak check otherwise).
    """
    shapes = MAKER.param_shapes(cell, input_size, hidden_size, num_layers, bidirectional,
                                **options)
    params = {}
    for name, shape in shapes.items():
        value = rng.uniform(-1.0, 1.0, shape)
        params[name] = 1.0 + 0.5 * value if name.startswith("weight_ln") else value
    return params


def _state_sizes(cell, options):
    if cell == "gru":
        return ("h",), (H,)
    return ("h", "c"), (options.get("proj_size") or H, H)


def _gradcheck(cell, num_layers, bidirectional, lengths, seed, **options):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    names, sizes = _state_sizes(cell, options)
    params = make_params(cell, num_layers, bidirectional, rng, **options)
    inputs = {"X": rng.standard_normal((B, T, I))}
    inputs.update({s + "0": 0.5 * rng.standard_normal((num_layers * D, B, n))
                   for s, n in zip(names, sizes)})
    R_out = rng.standard_normal((B, T, D * sizes[0]))
    R_state = [rng.standard_normal((num_layers * D, B, n)) for n in sizes]
    if lengths is not None:
        for b, L in enumerate(lengths):
            inputs["X"][b, L:] = np.nan        # the padding is never read

    def loss():
        out, final, _ = reference_network_forward(
            params, inputs["X"], tuple(inputs[s + "0"] for s in names), lengths, cell=cell)
        return (np.sum(out * R_out) + sum(np.sum(f * r) for f, r in zip(final, R_state)))

    out, final, cache = reference_network_forward(
        params, inputs["X"], tuple(inputs[s + "0"] for s in names), lengths, cell=cell)
    assert np.isfinite(loss())
    grad_X, analytic = reference_network_backward(R_out, tuple(R_state), cache)
    assert set(analytic) == set(params) | {s + "0" for s in names}
    analytic["X"] = grad_X
    for name, arr in {**params, **inputs}.items():
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            if np.isnan(arr[idx]):
                continue
            orig = arr[idx]
            arr[idx] = orig + EPS
            lp = loss()
            arr[idx] = orig - EPS
            lm = loss()
            arr[idx] = orig
            numeric[idx] = (lp - lm) / (2 * EPS)
        assert analytic[name].shape == arr.shape, name
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {name}")
    if lengths is not None:
        for b, L in enumerate(lengths):
            assert np.all(analytic["X"][b, L:] == 0.0)
            assert np.all(out[b, L:] == 0.0)


@pytest.mark.parametrize("options", LSTM_VARIANTS, ids=_variant_id)
def test_lstm_gradcheck_bidirectional_ragged(options):
    _gradcheck("lstm", 1, True, LENGTHS, seed=1, **options)


def test_gru_gradcheck_bidirectional_ragged():
    _gradcheck("gru", 1, True, LENGTHS, seed=2)


ALL_OPTIONS = dict(proj_size=P, peephole=True, coupled_gates=True, layer_norm=True)


@pytest.mark.parametrize("cell,options,bidirectional,lengths", [
    ("gru", {}, True, [4, 1, 3]),
    ("lstm", dict(proj_size=P), True, [4, 1, 3]),     # layer 1 reads 2P features
    ("lstm", ALL_OPTIONS, True, [4, 1, 3]),
    ("lstm", ALL_OPTIONS, False, None),
], ids=["gru-bi-ragged", "proj-bi-ragged", "all-bi-ragged", "all-uni"])
def test_gradcheck_two_layers(cell, options, bidirectional, lengths):
    _gradcheck(cell, 2, bidirectional, lengths, seed=3, **options)


# =====================================================================================
# Stored framework results (no framework needed)
# =====================================================================================

def test_cell_fixtures_present():
    names = {p.name for p in CELL_FIXTURES}
    for kind in ("torch_gru", "torch_lstmp", "ort_lstm_peephole", "ort_lstm_cifg",
                 "ort_lstm_cifg_peephole"):
        assert any(n.startswith(kind + "_") for n in names), kind


@pytest.mark.parametrize("path", CELL_FIXTURES, ids=[p.stem for p in CELL_FIXTURES])
def test_reference_matches_stored_cell_fixture(path):
    arrays, cfg = MAKER.read_fixture(path)
    theirs = {k: v for k, v in arrays.items()
              if k in ("out", "h_n", "c_n", "grad_X", "grad_h0", "grad_c0")
              or k.startswith("grad/")}
    # float32 fixtures: the same (exactly representable) numbers in float64
    ours = _reference_results(_as64(arrays), cfg["cell"], with_backward="grad_X" in theirs)
    _assert_parity(ours, theirs, RTOL[arrays["X"].dtype.name])
    assert "lengths" not in arrays or np.isnan(arrays["X"]).any()


@pytest.mark.parametrize("path", LSTM_FIXTURES, ids=[p.stem for p in LSTM_FIXTURES])
def test_reference_matches_stored_plain_lstm_fixture(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if not k.startswith("config/")}
    theirs = {k: v for k, v in arrays.items()
              if k in ("out", "h_n", "c_n", "grad_X", "grad_h0", "grad_c0")
              or k.startswith("grad/")}
    ours = _reference_results(_as64(arrays), "lstm")
    _assert_parity(ours, theirs, RTOL[arrays["X"].dtype.name])


def test_legacy_lstm_and_gru_wrappers_match_the_network_functions():
    rng = np.random.default_rng(4)
    params = make_params("lstm", 2, True, rng, proj_size=P, peephole=True)
    X = rng.standard_normal((B, T, I))
    h0, c0 = rng.standard_normal((4, B, P)), rng.standard_normal((4, B, H))
    out, (h_n, c_n), cache = reference_lstm_forward(params, X, h0, c0, LENGTHS, 2, True)
    out2, (h2, c2), cache2 = reference_network_forward(params, X, (h0, c0), LENGTHS)
    for a, b in ((out, out2), (h_n, h2), (c_n, c2)):
        np.testing.assert_array_equal(a, b)
    assert out.shape == (B, T, 2 * P) and h_n.shape == (4, B, P) and c_n.shape == (4, B, H)
    g = rng.standard_normal(out.shape)
    gX, grads = reference_lstm_backward(g, None, None, cache)
    gX2, grads2 = reference_network_backward(g, None, cache2)
    np.testing.assert_array_equal(gX, gX2)
    assert set(grads) == set(params) | {"h0", "c0"}
    with pytest.raises(ValueError, match="layers"):
        reference_lstm_forward(params, X, num_layers=3)

    gru = make_params("gru", 1, False, rng)
    out, h_n, cache = reference_gru_forward(gru, X)
    gX, grads = reference_gru_backward(np.ones_like(out), None, cache)
    assert out.shape == (B, T, H) and h_n.shape == (1, B, H) and gX.shape == X.shape
    assert set(grads) == set(gru) | {"h0"}


# =====================================================================================
# Live torch: torch.nn.GRU and torch.nn.LSTM(proj_size)
# =====================================================================================

TORCH_CASES = [name for name, cfg in MAKER.CASES.items() if cfg["source"] == "torch"]
ORT_CASES = [name for name, cfg in MAKER.CASES.items() if cfg["source"] == "onnxruntime"]


@pytest.mark.parametrize("case", TORCH_CASES)
def test_reference_matches_live_torch(case):
    pytest.importorskip("torch")
    cfg = MAKER.CASES[case]
    arrays = MAKER.make_inputs(cfg, "float64", seed=1000 + TORCH_CASES.index(case))
    theirs = MAKER.torch_results(arrays, cfg)
    _assert_parity(_reference_results(arrays, cfg["cell"]), theirs, RTOL["float64"])


@pytest.mark.parametrize("cell,proj_size", [("gru", 0), ("lstm", 3)])
def test_reference_matches_live_torch_three_layers_larger(cell, proj_size):
    # wider than the fixtures, H != I != P, three layers, packed, bidirectional
    pytest.importorskip("torch")
    cfg = dict(source="torch", cell=cell, num_layers=3, bidirectional=True,
               lengths=[5, 3, 1, 5], state=True, proj_size=proj_size, input_size=4,
               hidden_size=5)
    arrays = MAKER.make_inputs(cfg, "float64", seed=7)
    theirs = MAKER.torch_results(arrays, cfg)
    _assert_parity(_reference_results(arrays, cell), theirs, RTOL["float64"])


# =====================================================================================
# Live onnxruntime: LSTM with P and input_forget, GRU with linear_before_reset=1
# =====================================================================================

def _ort_cfg(bidirectional, **options):
    return dict(source="onnxruntime", cell="lstm", num_layers=1, bidirectional=bidirectional,
                lengths=[5, 2, 4], state=True, **options)


def _float32_exact(arrays):
    """float32-representable float64 arrays: the frameworks see the same numbers."""
    return {k: v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v
            for k, v in arrays.items()}


ORT_VARIANTS = [dict(peephole=True), dict(coupled_gates=True),
                dict(peephole=True, coupled_gates=True), {}]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("options", ORT_VARIANTS, ids=_variant_id)
def test_reference_matches_live_onnxruntime_lstm(options, bidirectional):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = _ort_cfg(bidirectional, **options)
    arrays = _float32_exact(MAKER.make_inputs(cfg, "float64", seed=20 + bidirectional))
    theirs = MAKER.onnx_lstm_results(arrays, cfg)
    ours = _reference_results(arrays, "lstm", with_backward=False)
    _assert_parity(ours, theirs, RTOL["float32"])


@pytest.mark.parametrize("peephole", [False, True], ids=["cifg", "cifg-peephole"])
def test_onnxruntime_input_forget_is_f_equals_one_minus_i(peephole):
    # Found with onnxruntime 1.32: input_forget=1 computes f = 1 - i from the
    # activated input gate (peephole included) and ignores the forget-gate
    # rows of W, R, B and p_f; input_forget=0 reads them.
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = _ort_cfg(True, peephole=peephole, coupled_gates=True)
    arrays = _float32_exact(MAKER.make_inputs(cfg, "float64", seed=30 + peephole))
    coupled = MAKER.onnx_lstm_results(arrays, cfg)
    # the same operator with random forget-gate rows and p_f: nothing changes
    rng = np.random.default_rng(5)
    W, R, Bias, Peep = MAKER.onnx_lstm_inputs(MAKER.params_of(arrays), coupled_gates=True)
    f_rows = slice(2 * H, 3 * H)                  # ONNX blocks i, o, f, c; P = [p_i, p_o, p_f]
    for a in (W, R):
        a[:, f_rows] = rng.uniform(-2, 2, a[:, f_rows].shape)
    Bias[:, f_rows] = rng.uniform(-2, 2, (2, H))
    Bias[:, 4 * H + 2 * H:4 * H + 3 * H] = rng.uniform(-2, 2, (2, H))
    Peep[:, f_rows] = rng.uniform(-2, 2, (2, H))
    results = {f: MAKER.onnx_lstm_run(arrays, cfg, W, R, Bias, Peep, input_forget=f)
               for f in (1, 0)}
    for name in ("out", "h_n", "c_n"):
        np.testing.assert_array_equal(results[1][name], coupled[name], err_msg=name)
    assert _rel_err(results[0]["out"], coupled["out"]) > 1e-2
    # and it is f = 1 - i: the reference's coupled gates
    ours = _reference_results(arrays, "lstm", with_backward=False)
    _assert_parity(ours, coupled, RTOL["float32"])


@pytest.mark.parametrize("bidirectional,lengths,state", [(False, None, False),
                                                         (True, [5, 2, 4], True)],
                         ids=["uni", "bi-packed-state"])
def test_reference_matches_live_onnxruntime_gru(bidirectional, lengths, state):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = dict(source="onnxruntime", cell="gru", num_layers=1, bidirectional=bidirectional,
               lengths=lengths, state=state)
    arrays = _float32_exact(MAKER.make_inputs(cfg, "float64", seed=40 + bidirectional))
    theirs = MAKER.onnx_gru_results(arrays, cfg)
    _assert_parity(_reference_results(arrays, "gru", with_backward=False), theirs,
                   RTOL["float32"])


# =====================================================================================
# Layer norm by hand: which vectors are normalised
# =====================================================================================

def _ln_params(rng, **options):
    p = make_params("lstm", 1, False, rng, layer_norm=True, **options)
    return {k[:-len("_l0")]: v for k, v in p.items()}


def test_layer_norm_step_written_out_by_hand():
    rng = np.random.default_rng(6)
    p = _ln_params(rng)
    x, h, c = (rng.standard_normal((2, n)) for n in (I, H, H))
    (h_t, c_t), _ = lstm_step_forward(p, x, (h, c))

    def ln(v):    # over the last axis, biased variance, eps 1e-5 (torch.nn.LayerNorm)
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    sig = lambda v: 1 / (1 + np.exp(-v))
    # the two products are normalised apart, each over all 4H gate entries of a row
    a = (ln(x @ p["weight_ih"].T) * p["weight_ln_ih"] + p["bias_ih"]
         + ln(h @ p["weight_hh"].T) * p["weight_ln_hh"] + p["bias_hh"])
    i, f, g, o = sig(a[:, :H]), sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sig(a[:, 3 * H:])
    c_new = f * c + i * g
    # c_t is normalised (over its H entries) only inside the output's tanh
    m = o * np.tanh(ln(c_new) * p["weight_ln_c"] + p["bias_ln_c"])
    np.testing.assert_allclose(c_t, c_new, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h_t, m, rtol=1e-14, atol=1e-15)
    assert np.abs(c_t.mean(axis=1)).max() > 1e-3           # carried unnormalised


def test_layer_norm_spans_all_gates_of_each_product():
    # ln(v) is unchanged by adding one number to every entry of v: adding the
    # same vector u to every row of W_ih (or W_hh) shifts all G entries of
    # x @ W_ih.T by x . u, and the output does not move. Adding u to the rows
    # of one gate block only moves it, so the normalisation is over the G
    # entries together, not per gate block.
    rng = np.random.default_rng(7)
    params = make_params("lstm", 1, True, rng, layer_norm=True, peephole=True)
    X = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal((2, B, H))
    out, (h_n, c_n), _ = reference_lstm_forward(params, X, h0, None, LENGTHS)
    for kind, width in (("weight_ih", I), ("weight_hh", H)):
        u = rng.standard_normal(width)
        shifted = dict(params, **{f"{kind}_l0": params[f"{kind}_l0"] + u,
                                  f"{kind}_l0_reverse": params[f"{kind}_l0_reverse"] + u})
        out_s, (h_s, c_s), _ = reference_lstm_forward(shifted, X, h0, None, LENGTHS)
        np.testing.assert_allclose(out_s, out, rtol=1e-12, atol=1e-12, err_msg=kind)
        np.testing.assert_allclose(c_s, c_n, rtol=1e-12, atol=1e-12, err_msg=kind)
        one_block = params[f"{kind}_l0"].copy()
        one_block[:H] += u
        out_b, _, _ = reference_lstm_forward(dict(params, **{f"{kind}_l0": one_block}), X,
                                             h0, None, LENGTHS)
        assert np.abs(out_b - out).max() > 1e-3, kind
    # without layer norm the same shift does move the output
    plain = {k: v for k, v in params.items() if "_ln_" not in k}
    out_p, _, _ = reference_lstm_forward(plain, X, h0, None, LENGTHS)
    shifted = dict(plain, weight_ih_l0=plain["weight_ih_l0"] + 1.0)
    assert np.abs(reference_lstm_forward(shifted, X, h0, None, LENGTHS)[0] - out_p).max() > 1e-3
