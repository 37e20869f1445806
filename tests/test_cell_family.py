"""The compiled cell family (issue 8): clstm.LSTM's variants and clstm.GRU.

clstm.LSTM(proj_size, peephole, coupled_gates, layer_norm), any combination,
and clstm.GRU, through the networks' generic interface (run /
backward_state / grads, weights set with load_state_dict under the
contract's names, README "The cell family"), against:

(a) the stored framework results, tests/fixtures/cells/*.npz (torch.nn.GRU,
    torch.nn.LSTM(proj_size) with every gradient; onnxruntime's LSTM with
    peepholes / input_forget, forward): no framework needed;
(b) the NumPy reference (clstm._reference, itself checked by
    tests/test_reference_cells.py): every variant, float64 to 1e-10
    relative; float32 against float64 on the same numbers to 1e-4;
(c) stepping one timestep at a time, carrying the states forward and their
    gradients backward, equals the whole-sequence call;
(d) live torch and onnxruntime, skipped without them.

Errors are normwise relative per array: max|ours - theirs| / max|theirs|.
"""

import itertools
import pathlib

import numpy as np
import pytest

import clstm
from clstm._reference import reference_network_backward, reference_network_forward
from _cell_fixture_maker import MAKER

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CELL_FIXTURES = sorted((FIXTURES / "cells").glob("*.npz"))
RTOL = {"float64": 1e-10, "float32": 1e-5}
# float32 against float64 on the same numbers. Layer norm divides by the spread
# of x @ W_ih.T, h @ W_hh.T and c_t across a row, which can be small (h after a
# projection, say): float32 rounding grows by 1 / std. The float32 NumPy
# reference itself is 8e-4 off its float64 in test_float32_matches_float64
# [lstm-proj-cifg-ln] (std of h @ W_hh.T down to 0.04); without layer norm 6e-7.
RTOL_32_VS_64 = {False: 1e-4, True: 2e-3}          # keyed by layer_norm


B, T, I, H, P = 5, 6, 3, 4, 3
LENGTHS = np.array([3, 6, 1, 6, 2])          # unsorted, includes 1 and T

LSTM_OPTIONS = [dict(proj_size=p, peephole=ph, coupled_gates=cg, layer_norm=ln)
                for p, ph, cg, ln in itertools.product((0, P), *[(False, True)] * 3)]
VARIANTS = [("gru", {})] + [("lstm", o) for o in LSTM_OPTIONS]


def _variant_id(variant):
    cell, options = variant
    parts = [name for name, key in (("proj", "proj_size"), ("peephole", "peephole"),
                                    ("cifg", "coupled_gates"), ("ln", "layer_norm"))
             if options.get(key)]
    return cell + "".join("-" + p for p in parts)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _assert_parity(ours, theirs, rtol, dtype=None):
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    errors = {k: _rel_err(ours[k], theirs[k]) for k in sorted(theirs)}
    bad = {k: e for k, e in errors.items() if not e <= rtol}
    assert not bad, f"relative errors above {rtol}: {bad}"
    if dtype is not None:
        wrong = {k for k, v in ours.items() if v.dtype != np.dtype(dtype)}
        assert not wrong, f"not {dtype}: {sorted(wrong)}"


# -- networks and data -------------------------------------------------------------------

def make_net(cell, dtype, input_size=I, hidden_size=H, num_layers=1, bidirectional=False,
             seed=0, **options):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                  random_state=seed)
    if cell == "gru":
        return clstm.GRU(input_size, hidden_size, **kwargs)
    return clstm.LSTM(input_size, hidden_size, **kwargs, **options)


def _state_sizes(cell, options, hidden_size=H):
    return (hidden_size,) if cell == "gru" else (options.get("proj_size") or hidden_size,
                                                 hidden_size)


def make_case(cell, options, num_layers, bidirectional, lengths, with_state, seed):
    """float32-exact float64 parameters (contract names) and data for one configuration."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    shapes = MAKER.param_shapes(cell, I, H, num_layers, bidirectional, **options)
    params = {}
    for name, shape in shapes.items():
        u = rng.uniform(-1.0, 1.0, shape)
        params[name] = 1.0 + 0.5 * u if name.startswith("weight_ln") else u
    sizes = _state_sizes(cell, options)
    data = {"X": rng.standard_normal((B, T, I)),
            "state": tuple(rng.standard_normal((num_layers * D, B, n)) for n in sizes)
            if with_state else None,
            "lengths": None if lengths is None else np.array(lengths),
            "grad_out": rng.standard_normal((B, T, D * sizes[0])),
            "grad_state": tuple(rng.standard_normal((num_layers * D, B, n)) for n in sizes)}
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    params = {k: f32(v) for k, v in params.items()}
    data = {k: (tuple(f32(s) for s in v) if isinstance(v, tuple) else
                f32(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in data.items()}
    return params, data


def _cast(data, dtype):
    def cast(v):
        if isinstance(v, tuple):
            return tuple(s.astype(dtype) for s in v)
        return v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
    return {k: cast(v) for k, v in data.items()}


def compiled_results(net, X, state, lengths, grad_out=None, grad_state=None):
    """Forward (and backward) of a compiled network, keyed like the fixtures."""
    out, final = net.run(X, state, lengths)
    names = net.state_names
    result = {"out": out, **{f"{s}_n": f for s, f in zip(names, final)}}
    if grad_out is not None:
        result["grad_X"] = net.backward_state(grad_out, grad_state)
        grads = dict(net.grads)
        result.update({f"grad_{s}0": grads.pop(s + "0") for s in names})
        result.update({"grad/" + k: v for k, v in grads.items()})
    return result


def reference_results(cell, params, X, state, lengths, grad_out=None, grad_state=None):
    """The same from the NumPy reference."""
    names = ("h", "c") if cell == "lstm" else ("h",)
    out, final, cache = reference_network_forward(params, X, state, lengths, cell=cell)
    result = {"out": out, **{f"{s}_n": f for s, f in zip(names, final)}}
    if grad_out is not None:
        grad_X, grads = reference_network_backward(grad_out, grad_state, cache)
        result["grad_X"] = grad_X
        result.update({f"grad_{s}0": grads.pop(s + "0") for s in names})
        result.update({"grad/" + k: v for k, v in grads.items()})
    return result


# =====================================================================================
# The contract: parameters, initialisation, interface
# =====================================================================================

@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_parameters_follow_the_contract(variant):
    cell, options = variant
    net = make_net(cell, "float64", num_layers=2, bidirectional=True, seed=3, **options)
    expected = MAKER.param_shapes(cell, I, H, 2, True, **options)
    got = {k: v.shape for k, v in net.state_dict().items()}
    assert got == expected
    bound = 1.0 / np.sqrt(H)
    for name, value in net.state_dict().items():
        if name.startswith("weight_ln"):
            assert np.all(value == 1.0), name               # layer-norm gains: ones
        elif name.startswith("bias_ln"):
            assert np.all(value == 0.0), name               # layer-norm biases: zeros
        else:
            assert np.all(np.abs(value) <= bound) and np.ptp(value) > 0, name
    assert net.state_names == (("h",) if cell == "gru" else ("h", "c"))
    assert net.output_size == (options.get("proj_size") or H)
    assert net.num_directions == 2 and net.num_layers == 2 and net.hidden_size == H
    assert net.input_size == I and np.dtype(net.dtype) == np.float64
    config = net.get_config()
    for key, value in options.items():
        assert config[key] == value, key
    clone = type(net)(**config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == expected


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_load_state_dict_is_strict(variant):
    cell, options = variant
    net = make_net(cell, "float64", **options)
    sd = net.state_dict()
    name = next(iter(sd))
    with pytest.raises(ValueError):
        net.load_state_dict({k: v for k, v in sd.items() if k != name})
    with pytest.raises(ValueError):
        net.load_state_dict({**sd, name: np.zeros(sd[name].shape + (1,))})
    with pytest.raises(ValueError):
        net.load_state_dict({**sd, "weight_unknown_l0": np.zeros(3)})


def test_gru_forward_and_backward_signatures():
    params, d = make_case("gru", {}, 2, True, LENGTHS, True, seed=4)
    net = make_net("gru", "float64", num_layers=2, bidirectional=True)
    net.load_state_dict(params)
    out, h_n = net.forward(d["X"], d["state"][0], d["lengths"])
    grad_X = net.backward(d["grad_out"], d["grad_state"][0])
    assert out.shape == (B, T, 2 * H) and h_n.shape == (4, B, H)
    assert set(net.grads) == set(params) | {"h0"}
    out2, (h2,) = net.run(d["X"], d["state"], d["lengths"])
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h2)
    np.testing.assert_array_equal(grad_X, net.backward_state(d["grad_out"], d["grad_state"]))


def test_lstm_with_projection_shapes():
    net = make_net("lstm", "float64", num_layers=2, bidirectional=True, proj_size=P)
    X = np.random.default_rng(0).standard_normal((B, T, I))
    out, (h_n, c_n) = net.forward(X, lengths=LENGTHS)
    assert out.shape == (B, T, 2 * P) and h_n.shape == (4, B, P) and c_n.shape == (4, B, H)
    net.backward(np.ones_like(out))
    assert net.grads["h0"].shape == (4, B, P) and net.grads["c0"].shape == (4, B, H)


# =====================================================================================
# (a) stored framework results
# =====================================================================================

def _fixture_net(cfg, dtype):
    options = {k: cfg[k] for k in MAKER.OPTIONS} if cfg["cell"] == "lstm" else {}
    return make_net(cfg["cell"], dtype, cfg["input_size"], cfg["hidden_size"],
                    cfg["num_layers"], cfg["bidirectional"], **options)


@pytest.mark.parametrize("path", CELL_FIXTURES, ids=[p.stem for p in CELL_FIXTURES])
def test_matches_stored_fixture(path):
    arrays, cfg = MAKER.read_fixture(path)
    names = ("h", "c") if cfg["cell"] == "lstm" else ("h",)
    theirs = {k: v for k, v in arrays.items()
              if k in ("out", "h_n", "c_n", "grad_X", "grad_h0", "grad_c0")
              or k.startswith("grad/")}
    dtype = arrays["X"].dtype.name
    # float32 fixtures also run in float64 on the same numbers
    for run_dtype in ("float64", "float32") if dtype == "float32" else (dtype,):
        net = _fixture_net(cfg, run_dtype)
        net.load_state_dict(MAKER.params_of(arrays))
        state = tuple(arrays[f"{s}0"] for s in names) if "h0" in arrays else None
        backward = "grad_X" in theirs
        ours = compiled_results(
            net, arrays["X"], state, arrays.get("lengths"),
            arrays["grad_out"] if backward else None,
            tuple(arrays[f"grad_{s}_n"] for s in names) if backward else None)
        _assert_parity(ours, theirs, RTOL[dtype], run_dtype)
        if "lengths" in arrays:               # NaN in the padding of X reached nothing
            for b, L in enumerate(arrays["lengths"]):
                assert np.all(ours["out"][b, L:] == 0.0)
                if backward:
                    assert np.all(ours["grad_X"][b, L:] == 0.0)


# =====================================================================================
# (b) the NumPy reference
# =====================================================================================

CONFIGS = [pytest.param(2, True, LENGTHS, True, id="L2-bi-ragged-h0"),
           pytest.param(1, False, None, False, id="L1-uni")]


@pytest.mark.parametrize("num_layers,bidirectional,lengths,with_state", CONFIGS)
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_float64_matches_reference(variant, num_layers, bidirectional, lengths, with_state):
    cell, options = variant
    params, d = make_case(cell, options, num_layers, bidirectional, lengths, with_state, seed=5)
    net = make_net(cell, "float64", num_layers=num_layers, bidirectional=bidirectional,
                   **options)
    net.load_state_dict(params)
    ours = compiled_results(net, d["X"], d["state"], d["lengths"], d["grad_out"],
                            d["grad_state"])
    theirs = reference_results(cell, params, d["X"], d["state"], d["lengths"], d["grad_out"],
                               d["grad_state"])
    _assert_parity(ours, theirs, RTOL["float64"], "float64")
    if lengths is not None:
        for b, L in enumerate(lengths):
            assert np.all(ours["out"][b, L:] == 0.0) and np.all(ours["grad_X"][b, L:] == 0.0)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_float32_matches_float64(variant):
    cell, options = variant
    params, d = make_case(cell, options, 2, True, LENGTHS, True, seed=6)
    results = {}
    for dtype in ("float32", "float64"):
        net = make_net(cell, dtype, num_layers=2, bidirectional=True, **options)
        net.load_state_dict(params)
        dd = _cast(d, dtype)
        results[dtype] = compiled_results(net, dd["X"], dd["state"], dd["lengths"],
                                          dd["grad_out"], dd["grad_state"])
    _assert_parity(results["float32"], results["float64"],
                   RTOL_32_VS_64[options.get("layer_norm", False)], "float32")


# =====================================================================================
# (c) stepping one timestep at a time equals the whole sequence
# =====================================================================================

STEP_VARIANTS = [("gru", {}), ("lstm", dict(proj_size=P)),
                 ("lstm", dict(peephole=True, coupled_gates=True)),
                 ("lstm", dict(layer_norm=True)),
                 ("lstm", dict(proj_size=P, peephole=True, coupled_gates=True,
                               layer_norm=True))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=_variant_id)
def test_stepping_matches_whole_sequence(variant, dtype):
    cell, options = variant
    params, d = make_case(cell, options, 2, False, None, True, seed=7)
    d = _cast(d, dtype)
    net = make_net(cell, dtype, num_layers=2, **options)
    net.load_state_dict(params)
    whole = compiled_results(net, d["X"], d["state"], None, d["grad_out"], d["grad_state"])

    state, states, outs = d["state"], [], []
    for t in range(T):
        states.append(state)
        out_t, state = net.run(d["X"][:, t:t + 1], state)
        outs.append(out_t)
    final = state
    grad_state = d["grad_state"]
    grads = {k: np.zeros_like(v) for k, v in net.params.items()}
    grad_X = np.zeros_like(d["X"])
    for t in reversed(range(T)):
        net.run(d["X"][:, t:t + 1], states[t])
        grad_X[:, t:t + 1] = net.backward_state(d["grad_out"][:, t:t + 1], grad_state)
        grad_state = tuple(net.grads[s + "0"] for s in net.state_names)
        for k in grads:
            grads[k] += net.grads[k]
    stepped = {"out": np.concatenate(outs, axis=1), "grad_X": grad_X,
               **{f"{s}_n": f for s, f in zip(net.state_names, final)},
               **{f"grad_{s}0": g for s, g in zip(net.state_names, grad_state)},
               **{"grad/" + k: v for k, v in grads.items()}}
    rtol = {"float64": 1e-11, "float32": 1e-3 if options.get("layer_norm") else 2e-5}[dtype]
    _assert_parity(stepped, whole, rtol, dtype)


# =====================================================================================
# (d) live torch and onnxruntime
# =====================================================================================

TORCH_CASES = [n for n, cfg in MAKER.CASES.items() if cfg["source"] == "torch"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TORCH_CASES)
def test_matches_live_torch(case, dtype):
    pytest.importorskip("torch")
    cfg = MAKER.CASES[case]
    arrays = MAKER.make_inputs(cfg, dtype, seed=2000 + TORCH_CASES.index(case))
    theirs = MAKER.torch_results(arrays, cfg)
    names = ("h", "c") if cfg["cell"] == "lstm" else ("h",)
    full = dict(cfg, input_size=MAKER.INPUT_SIZE, hidden_size=MAKER.HIDDEN_SIZE,
                **MAKER.options(cfg))
    net = _fixture_net(full, dtype)
    net.load_state_dict(MAKER.params_of(arrays))
    state = tuple(arrays[f"{s}0"] for s in names) if "h0" in arrays else None
    ours = compiled_results(net, arrays["X"], state, arrays.get("lengths"), arrays["grad_out"],
                            tuple(arrays[f"grad_{s}_n"] for s in names))
    _assert_parity(ours, theirs, RTOL[dtype], dtype)


@pytest.mark.parametrize("cell,proj_size", [("gru", 0), ("lstm", 2)])
def test_state_dict_equals_torch(cell, proj_size):
    torch = pytest.importorskip("torch")
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True)
    if cell == "gru":
        ref = torch.nn.GRU(5, 4, **kwargs)
        net = clstm.GRU(5, 4, num_layers=2, bidirectional=True)
    else:
        ref = torch.nn.LSTM(5, 4, proj_size=proj_size, **kwargs)
        net = clstm.LSTM(5, 4, num_layers=2, bidirectional=True, proj_size=proj_size)
    theirs = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert [(k, v.shape) for k, v in net.state_dict().items()] == theirs   # names, order
    net.load_state_dict(dict(ref.named_parameters()))      # a torch state_dict loads
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
                        strict=True)
    X = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        t_out, _ = ref(torch.from_numpy(X))
    assert _rel_err(net.run(X)[0], t_out.numpy()) <= RTOL["float32"]


ORT_OPTIONS = [dict(peephole=True), dict(coupled_gates=True),
               dict(peephole=True, coupled_gates=True)]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("options", ORT_OPTIONS,
                         ids=lambda o: _variant_id(("lstm", o)))
def test_lstm_matches_live_onnxruntime(options, bidirectional):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = dict(source="onnxruntime", cell="lstm", num_layers=1, bidirectional=bidirectional,
               lengths=[5, 2, 4, 1], state=True, **options)
    arrays = MAKER.make_inputs(cfg, "float32", seed=50 + bidirectional)
    theirs = MAKER.onnx_lstm_results(arrays, cfg)
    net = make_net("lstm", "float32", MAKER.INPUT_SIZE, MAKER.HIDDEN_SIZE,
                   bidirectional=bidirectional, **options)
    net.load_state_dict(MAKER.params_of(arrays))
    ours = compiled_results(net, arrays["X"], (arrays["h0"], arrays["c0"]), arrays["lengths"])
    _assert_parity(ours, theirs, RTOL["float32"], "float32")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_gru_matches_live_onnxruntime(bidirectional):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = dict(source="onnxruntime", cell="gru", num_layers=1, bidirectional=bidirectional,
               lengths=[5, 2, 4, 1], state=True)
    arrays = MAKER.make_inputs(cfg, "float32", seed=60 + bidirectional)
    theirs = MAKER.onnx_gru_results(arrays, cfg)
    net = make_net("gru", "float32", MAKER.INPUT_SIZE, MAKER.HIDDEN_SIZE,
                   bidirectional=bidirectional)
    net.load_state_dict(MAKER.params_of(arrays))
    ours = compiled_results(net, arrays["X"], (arrays["h0"],), arrays["lengths"])
    _assert_parity(ours, theirs, RTOL["float32"], "float32")
