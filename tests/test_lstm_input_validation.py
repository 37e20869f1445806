"""clstm.LSTM input validation: every bad input is refused with a message naming
the problem; every acceptable variant (integer X, Fortran order, strided views,
NaN in the padding) gives exactly the result of the canonical input.
"""

import numpy as np
import pytest

import clstm

B, T, I, H = 4, 5, 3, 2


def _net(**kwargs):
    kwargs.setdefault("dtype", "float64")
    kwargs.setdefault("random_state", 0)
    return clstm.LSTM(I, H, **kwargs)


def _X(seed=0, shape=(B, T, I)):
    return np.random.default_rng(seed).standard_normal(shape)


def _run(net, X, h0=None, c0=None, lengths=None, seed=1):
    """forward + backward with fixed upstream gradients; every result, copied."""
    rng = np.random.default_rng(seed)
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    shape = h_n.shape
    grad_X = net.backward(rng.standard_normal(out.shape), rng.standard_normal(shape),
                          rng.standard_normal(shape))
    result = {"out": out, "h_n": h_n, "c_n": c_n, "grad_X": grad_X}
    result.update({"grad/" + k: v for k, v in net.grads.items()})
    return {k: np.array(v, copy=True) for k, v in result.items()}


def _assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- constructor ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(hidden_size=-3), ValueError, "hidden_size"),
    (dict(hidden_size=2.5), TypeError, "hidden_size"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(input_size=0), ValueError, "input_size"),
    (dict(input_size="3"), TypeError, "input_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dtype="int32"), ValueError, "dtype"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(dtype="nonsense"), ValueError, "dtype"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="0.5"), ValueError, "dropout"),
    (dict(recurrent_dropout=1.0), ValueError, "recurrent_dropout"),
    (dict(bidirectional="yes"), TypeError, "bidirectional"),
    (dict(bidirectional=1), TypeError, "bidirectional"),
    (dict(random_state="seed"), TypeError, "random_state"),
])
def test_invalid_constructor_args(kwargs, exc, match):
    args = dict(input_size=I, hidden_size=H)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        clstm.LSTM(**args)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64")])
def test_dtype_spellings(dtype):
    net = clstm.LSTM(I, H, dtype=dtype)
    assert all(v.dtype == np.dtype(dtype) for v in net.state_dict().values())


def test_random_state_reproducible():
    a = clstm.LSTM(I, H, random_state=3).state_dict()
    b = clstm.LSTM(I, H, random_state=np.random.default_rng(3)).state_dict()
    c = clstm.LSTM(I, H, random_state=4).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["weight_hh_l0"], c["weight_hh_l0"])
    bound = 1 / np.sqrt(H)
    assert all(np.abs(v).max() <= bound for v in a.values())


# --- X ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(T, I), (B, T, I, 1), (I,)])
def test_X_wrong_ndim(shape):
    with pytest.raises(ValueError, match="3-D"):
        _net().forward(np.zeros(shape))


def test_X_wrong_feature_count():
    with pytest.raises(ValueError, match=f"input_size={I}"):
        _net().forward(np.zeros((B, T, I + 1)))


@pytest.mark.parametrize("shape", [(0, T, I), (B, 0, I)], ids=["empty batch", "T=0"])
def test_X_empty(shape):
    with pytest.raises(ValueError, match="at least one"):
        _net().forward(np.zeros(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_X_non_finite(bad, dtype):
    X = _X()
    X[1, 2, 0] = bad
    with pytest.raises(ValueError, match="X contains 1 NaN or infinite"):
        _net(dtype=dtype).forward(X)


def test_X_non_finite_inside_length_is_refused():
    X = _X()
    X[0, 1, 0] = np.nan          # inside length 3 of sequence 0
    with pytest.raises(ValueError, match="X contains"):
        _net().forward(X, lengths=[3, 5, 5, 5])


@pytest.mark.parametrize("value,exc,match", [
    (np.zeros((B, T, I), dtype=complex), TypeError, "complex"),
    (np.zeros((B, T, I), dtype=object), TypeError, "object"),
    (np.full((B, T, I), "a"), TypeError, "<U1"),
    (np.zeros((B, T, I), dtype="datetime64[s]"), TypeError, "datetime"),
    ([[[1.0, 2.0, 3.0]], [[1.0, 2.0]]], ValueError, "could not be converted"),
])
def test_X_bad_dtypes(value, exc, match):
    with pytest.raises(exc, match=match):
        _net().forward(value)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, bool, np.float16])
def test_X_integer_and_other_real_dtypes_are_cast(dtype):
    X = np.random.default_rng(0).integers(0, 2, (B, T, I)).astype(dtype)
    net = _net()
    got = _run(net, X)
    ref = _run(net, X.astype(np.float64))
    _assert_same(got, ref)
    assert got["out"].dtype == np.float64


def test_X_nested_list_accepted():
    X = _X()
    net = _net()
    _assert_same(_run(net, X.tolist()), _run(net, X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_X_fortran_order_and_strided_views(dtype):
    net = _net(dtype=dtype, num_layers=2, bidirectional=True)
    X = _X().astype(dtype)
    ref = _run(net, X, lengths=[5, 2, 3, 1])
    variants = {
        "fortran": np.asfortranarray(X),
        "strided": np.repeat(X, 2, axis=0)[::2],
        "strided_T": np.repeat(X, 3, axis=1)[:, ::3],
        "strided_features": np.stack([X, X], axis=3)[..., 0],
        "time_major_view": np.ascontiguousarray(X.transpose(1, 0, 2)).transpose(1, 0, 2),
        "negative_strides": np.ascontiguousarray(X[::-1, ::-1])[::-1, ::-1],
        "other_dtype": X.astype(np.float32 if dtype == "float64" else np.float64),
    }
    for name, Xv in variants.items():
        assert name == "other_dtype" or np.array_equal(Xv, X)
        got = _run(net, Xv, lengths=[5, 2, 3, 1])
        if name == "other_dtype" and dtype == "float64":
            continue      # float32 input rounded: a different X
        _assert_same(got, ref)
    for name in ("fortran", "strided", "strided_T", "strided_features", "time_major_view",
                 "negative_strides"):
        assert not variants[name].flags.c_contiguous, name


# --- padding ----------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_padding_invariance(num_layers, bidirectional, dtype):
    net = _net(num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
    lengths = np.array([2, 5, 1, 3])
    X = _X().astype(dtype)
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(9)
    h0 = rng.standard_normal((num_layers * D, B, H))
    c0 = rng.standard_normal((num_layers * D, B, H))
    ref = _run(net, X, h0, c0, lengths)
    pad = np.arange(T)[None, :] >= lengths[:, None]
    for fill in (1e6, -3.0, np.nan, np.inf, "random"):
        Xp = X.copy()
        Xp[pad] = rng.standard_normal((pad.sum(), I)) * 100 if fill == "random" else fill
        _assert_same(_run(net, Xp, h0, c0, lengths), ref)
    # the padding of the result is zero: output and input gradient
    for b, L in enumerate(lengths):
        assert np.all(ref["out"][b, L:] == 0) and np.all(ref["grad_X"][b, L:] == 0)


def test_padding_of_grad_out_is_ignored():
    net = _net(bidirectional=True)
    lengths = [2, 5, 1, 3]
    out, _ = net.forward(_X(), lengths=lengths)
    g = np.random.default_rng(0).standard_normal(out.shape)
    gX = net.backward(g, retain_cache=True)
    grads = {k: v.copy() for k, v in net.grads.items()}
    g2 = g.copy()
    for b, L in enumerate(lengths):
        g2[b, L:] = 1e3
    np.testing.assert_array_equal(net.backward(g2), gX)
    for k, v in grads.items():
        np.testing.assert_array_equal(net.grads[k], v, err_msg=k)


def test_lengths_all_T_equals_no_lengths():
    net = _net(num_layers=2, bidirectional=True)
    X = _X()
    _assert_same(_run(net, X, lengths=[T] * B), _run(net, X))


# --- lengths -------------------------------------------------------------------------

@pytest.mark.parametrize("lengths,exc,match", [
    ([5, 5, 5], ValueError, "one entry per sequence"),
    ([[5, 5, 5, 5]], ValueError, "one entry per sequence"),
    (5, ValueError, "one entry per sequence"),
    ([5, 0, 5, 5], ValueError, r"\[1, T=5\]"),
    ([5, -1, 5, 5], ValueError, r"\[1, T=5\]"),
    ([5, 6, 5, 5], ValueError, r"\[1, T=5\]"),
    ([5, 2.5, 5, 5], ValueError, "whole numbers"),
    ([5, np.nan, 5, 5], ValueError, "whole numbers"),
    (["5", "5", "5", "5"], TypeError, "integers"),
    ([True, True, True, True], TypeError, "integers"),
])
def test_bad_lengths(lengths, exc, match):
    with pytest.raises(exc, match=match):
        _net().forward(_X(), lengths=lengths)


def test_integral_float_lengths_accepted():
    net = _net()
    X = _X()
    _assert_same(_run(net, X, lengths=np.array([2.0, 5.0, 1.0, 3.0])),
                 _run(net, X, lengths=np.array([2, 5, 1, 3], dtype=np.int32)))


# --- initial states ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_state_non_finite(name, bad):
    state = np.zeros((1, B, H))
    state[0, 1, 1] = bad
    with pytest.raises(ValueError, match=f"{name} contains"):
        _net().forward(_X(), **{name: state})


@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("shape", [(B, H), (2, B, H), (1, B + 1, H), (1, B, H + 1)])
def test_state_wrong_shape(name, shape):
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        _net().forward(_X(), **{name: np.zeros(shape)})


def test_state_complex_refused():
    with pytest.raises(TypeError, match="h0 has complex"):
        _net().forward(_X(), h0=np.zeros((1, B, H), dtype=complex))


def test_zero_state_equals_no_state():
    net = _net(num_layers=2, bidirectional=True)
    z = np.zeros((4, B, H))
    _assert_same(_run(net, _X(), z, z), _run(net, _X()))


# --- backward ----------------------------------------------------------------------------------

def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="forward"):
        _net().backward(np.zeros((B, T, H)))


def test_backward_after_load_state_dict_needs_new_forward():
    net = _net()
    net.forward(_X())
    net.load_state_dict(net.state_dict())
    with pytest.raises(RuntimeError, match="forward"):
        net.backward(np.zeros((B, T, H)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(grad_out=np.zeros((B, T, H + 1))), "grad_out has shape"),
    (dict(grad_out=np.zeros((B, T - 1, H))), "grad_out has shape"),
    (dict(grad_out=np.zeros((B, T, H)), grad_h_n=np.zeros((2, B, H))), "grad_h_n"),
    (dict(grad_out=np.zeros((B, T, H)), grad_c_n=np.zeros((1, B, H + 1))), "grad_c_n"),
    (dict(grad_out=np.full((B, T, H), np.nan)), "grad_out contains"),
    (dict(grad_out=np.zeros((B, T, H)), grad_h_n=np.full((1, B, H), np.inf)),
     "grad_h_n contains"),
])
def test_backward_bad_gradients(kwargs, match):
    net = _net()
    net.forward(_X())
    with pytest.raises(ValueError, match=match):
        net.backward(**kwargs)


def test_backward_grad_out_complex_refused():
    net = _net()
    net.forward(_X())
    with pytest.raises(TypeError, match="grad_out"):
        net.backward(np.zeros((B, T, H), dtype=complex))


# --- state dicts ------------------------------------------------------------------------------

def _assert_params_unchanged(net, before):
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v, err_msg=k)


def _broken_state_dicts(net):
    sd = net.state_dict()
    missing = dict(sd)
    del missing["bias_hh_l0"]
    extra = dict(sd, weight_ih_l1=np.zeros((4 * H, H)))
    # valid entries first, the bad one last: nothing may be half-loaded
    misshaped = {k: v + 1.0 for k, v in sd.items()}
    misshaped["bias_hh_l0"] = np.zeros(4 * H + 1)
    transposed = {k: v + 1.0 for k, v in sd.items()}
    transposed["weight_ih_l0"] = transposed["weight_ih_l0"].T
    nan = {k: v + 1.0 for k, v in sd.items()}
    nan["bias_hh_l0"] = nan["bias_hh_l0"].copy()
    nan["bias_hh_l0"][3] = np.nan
    inf = {k: v + 1.0 for k, v in sd.items()}
    inf["weight_hh_l0"] = np.full((4 * H, H), np.inf)
    string = dict(sd, weight_hh_l0=np.full((4 * H, H), "x"))
    complex_ = dict(sd, weight_hh_l0=np.zeros((4 * H, H), dtype=complex))
    return [
        pytest.param(missing, ValueError, r"missing keys \['bias_hh_l0'\]", id="missing"),
        pytest.param(extra, ValueError, r"unexpected keys \['weight_ih_l1'\]", id="extra"),
        pytest.param(misshaped, ValueError, r"state_dict\['bias_hh_l0'\] has shape",
                     id="misshaped"),
        pytest.param(transposed, ValueError, r"state_dict\['weight_ih_l0'\] has shape",
                     id="transposed"),
        pytest.param(nan, ValueError, "bias_hh_l0 contains 1 NaN", id="nan"),
        pytest.param(inf, ValueError, "weight_hh_l0 contains", id="inf"),
        pytest.param(string, TypeError, "weight_hh_l0", id="string"),
        pytest.param(complex_, TypeError, "weight_hh_l0 has complex", id="complex"),
        pytest.param([("weight_ih_l0", 1)], TypeError, "mapping", id="not-a-mapping"),
    ]


@pytest.mark.parametrize("state_dict,exc,match", _broken_state_dicts(
    clstm.LSTM(I, H, dtype="float64", random_state=0)))
def test_load_state_dict_refuses_and_leaves_params_unchanged(state_dict, exc, match):
    net = _net()
    X = _X()
    out_before, _ = net.forward(X)
    before = net.state_dict()
    with pytest.raises(exc, match=match):
        net.load_state_dict(state_dict)
    _assert_params_unchanged(net, before)
    np.testing.assert_array_equal(net.forward(X)[0], out_before)


def test_load_state_dict_bidirectional_mismatch_names_keys():
    uni = _net()
    bi = _net(bidirectional=True)
    with pytest.raises(ValueError, match="weight_ih_l0_reverse"):
        uni.load_state_dict(bi.state_dict())
    with pytest.raises(ValueError, match="weight_ih_l0_reverse"):
        bi.load_state_dict(uni.state_dict())


def test_load_state_dict_copies_the_arrays():
    # the net must not alias the caller's arrays: mutating them later changes nothing
    net = _net()
    sd = {k: v * 0.5 for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    snapshot = net.state_dict()
    for v in sd.values():
        v += 1.0
    _assert_params_unchanged(net, snapshot)


def test_load_state_dict_accepts_lists_and_casts():
    net = _net(dtype="float32")
    src = _net(dtype="float64", random_state=5).state_dict()
    net.load_state_dict({k: v.tolist() for k, v in src.items()})
    for k, v in src.items():
        assert net.params[k].dtype == np.float32
        np.testing.assert_array_equal(net.params[k], v.astype(np.float32))


def test_state_dict_returns_copies():
    net = _net()
    sd = net.state_dict()
    sd["weight_ih_l0"][...] = 0.0
    assert np.any(net.state_dict()["weight_ih_l0"] != 0.0)
