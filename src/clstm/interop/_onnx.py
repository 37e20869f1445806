"""ONNX export and import of clstm networks.

Export builds one graph, opset 17 (the first with LayerNormalization) and IR
version 8 (so that runtimes older than this onnx package read it too). Each
layer of a network becomes, in order of preference:

* the ONNX LSTM operator: plain LSTM, peepholes (input ``P``, reordered to
  ``[p_i, p_o, p_f]``) and coupled gates (``input_forget=1``; the operator
  still wants the forget rows, which it ignores: zeros);
* the ONNX GRU operator with ``linear_before_reset=1`` (torch's GRU);
* a ``Scan`` over time of basic operators for what no operator expresses:
  projection (``proj_size``) and layer normalisation, with any other option.
  The input product ``x W_ih^T`` (and its normalisation) is one MatMul over
  all steps before the Scan; the body does the recurrent product, the gates,
  the state update and the projection. Ragged batches run masked: a step past
  a sequence's length keeps the state and outputs zero, which is the packed
  semantics in both directions (the reverse Scan meets each sequence's last
  step with the state still at its initial value).

The graph is batch-first like clstm (onnxruntime refuses the operators'
``layout=1``: "Batchwise recurrent operations (layout == 1) are not
supported"), so Transpose nodes sit at the ends. It computes in float32
whatever the network's dtype: onnxruntime's LSTM and GRU kernels have no
float64 version.

`OnnxGraph` and `add_network` are the builder a larger graph (an estimator's
standardisation and head, say) uses: they append a network's nodes to a graph
and return the names of its outputs.
"""

import os

import numpy as np

from clstm._gru import GRU
from clstm._lstm import LSTM
from clstm._persistence import write_atomically
from clstm._rnn import param_name
from clstm._version import __version__
from clstm.interop._optional import import_optional

__all__ = ["OPSET", "OnnxGraph", "add_network", "export_onnx", "import_onnx"]

OPSET = 17
IR_VERSION = 8
LN_EPS = 1e-5          # clstm's layer-norm epsilon (clstm._reference.LN_EPS)

# ONNX gate blocks. LSTM: i, o, f, c (c = clstm's g); P = [p_i, p_o, p_f].
# GRU: z, r, h (h = torch's n).
_ONNX_LSTM_BLOCKS = ("i", "o", "f", "g")
_ONNX_PEEPHOLES = ("i", "o", "f")
_ONNX_GRU_BLOCKS = ("z", "r", "n")
_TORCH_GRU_BLOCKS = ("r", "z", "n")
_LSTM_BLOCKS = {False: ("i", "f", "g", "o"), True: ("i", "g", "o")}   # clstm's, by coupled_gates


def _onnx(purpose="clstm.export_onnx"):
    return import_optional("onnx", purpose)


# =====================================================================================
# Graph builder
# =====================================================================================

class OnnxGraph:
    """The nodes, initializers, inputs and outputs of an ONNX graph being built.

    Names are made unique over the graph and all its subgraphs (ONNX forbids
    a subgraph to shadow an outer name); initializers always go to the root
    graph, and subgraphs read them from the outer scope.

    Examples
    --------
    >>> g = OnnxGraph("model")
    >>> X = g.input("X", "float32", ["batch", "time", 3])
    >>> out, (h_n, c_n) = add_network(g, net, X)
    >>> y = g.op("MatMul", [out, g.constant("head", W)])
    >>> g.output(g.op("Identity", [y], name="y"), "float32", ["batch", "time", 1])
    >>> model = g.make_model()
    """

    def __init__(self, name="clstm", _root=None):
        self.onnx = _onnx() if _root is None else _root.onnx
        self.name = name
        self.nodes, self.inputs, self.outputs = [], [], []
        self._root = self if _root is None else _root
        if _root is None:
            self.initializers = []
            self._used, self._reserved = set(), set()

    # -- names and values -----------------------------------------------------------
    def fresh(self, base):
        """A name not used yet anywhere in the graph, from `base`."""
        used = self._root._used
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def reserve(self, *names):
        """Keep `names` for later: fresh() avoids them; an input or a node's
        ``outputs=`` may take them."""
        for name in names:
            self._claim(name)
            self._root._reserved.add(name)

    def _claim(self, name):
        root = self._root
        if name in root._reserved:
            root._reserved.discard(name)
            return name
        if name in root._used:
            raise ValueError(f"the name {name!r} is already used in this ONNX graph")
        root._used.add(name)
        return name

    def constant(self, base, value, dtype=np.float32):
        """An initializer (in the root graph) holding `value`; returns its name."""
        helper = self.onnx.numpy_helper
        name = self.fresh(base)
        self._root.initializers.append(helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, n_outputs=1, name=None, outputs=None, **attributes):
        """Append a node; returns its output name (a list if n_outputs > 1).

        Empty strings in `inputs` are omitted optional inputs (trailing ones
        are dropped); `name` is the base of fresh output names, `outputs`
        the exact names instead (unused or reserved).
        """
        inputs = list(inputs)
        while inputs and not inputs[-1]:
            inputs.pop()
        base = name or op_type.lower()
        if outputs is not None:
            outputs = [self._claim(o) for o in outputs]
            n_outputs = len(outputs)
        else:
            outputs = [self.fresh(base if n_outputs == 1 else f"{base}_{k}")
                       for k in range(n_outputs)]
        self.nodes.append(self.onnx.helper.make_node(
            op_type, inputs, outputs, name=self.fresh(f"{base}_node"), **attributes))
        return outputs[0] if n_outputs == 1 else outputs

    def _value_info(self, name, elem_type, shape):
        if elem_type == "str":
            elem = self.onnx.TensorProto.STRING
        else:
            elem = self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(elem_type))
        return self.onnx.helper.make_tensor_value_info(name, elem, shape)

    def input(self, name, elem_type, shape, fresh=False):
        """Declare a graph input (`shape`: ints and dimension names); returns its
        name: `name` itself, or with ``fresh=True`` a fresh name from it."""
        name = self.fresh(name) if fresh else self._claim(name)
        self.inputs.append(self._value_info(name, elem_type, shape))
        return name

    def output(self, name, elem_type, shape):
        """Declare the value `name` (made by a node of this graph) an output."""
        self.outputs.append(self._value_info(name, elem_type, shape))
        return name

    def subgraph(self, name):
        """An empty graph for a Scan/Loop/If body: same names, outer initializers."""
        return OnnxGraph(name, _root=self._root)

    # -- protos ---------------------------------------------------------------------
    def make_graph(self):
        """The GraphProto (a subgraph holds no initializers of its own)."""
        initializers = self.initializers if self is self._root else []
        return self.onnx.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                           initializer=initializers)

    def make_model(self, opset=OPSET, doc_string="", metadata=None):
        """The ModelProto of this (root) graph."""
        helper = self.onnx.helper
        model = helper.make_model(self.make_graph(),
                                  opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="clstm", producer_version=__version__,
                                  doc_string=doc_string)
        model.ir_version = IR_VERSION
        if metadata:
            helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
        return model


# =====================================================================================
# A network's nodes
# =====================================================================================

def _check_network(net, purpose):
    if not isinstance(net, (LSTM, GRU)):
        raise TypeError(f"{purpose} takes a clstm.LSTM or clstm.GRU network or a fitted "
                        f"LSTMRegressor / LSTMClassifier, got {type(net).__name__}")


def _uses_scan(net):
    """True if the LSTM operator cannot express the network's cell."""
    return isinstance(net, LSTM) and bool(net.proj_size or net.layer_norm)


def add_network(graph, net, X, lengths=None, state=None, *, scan=False):
    """Append the nodes of `net` (clstm.LSTM or clstm.GRU) to `graph`.

    Parameters
    ----------
    graph : OnnxGraph
    net : clstm.LSTM or clstm.GRU
        Its parameters become float32 initializers.
    X : str
        Name of a float32 tensor (batch, time, input_size) in `graph`.
    lengths : str, optional
        Name of an int64 tensor (batch,) of sequence lengths in [1, time];
        omitted: every sequence runs all steps.
    state : tuple of str or None, optional
        Names of the initial states, one per ``net.state_names`` (``h0`` of
        shape (num_layers * D, batch, output_size), ``c0`` (..., hidden_size));
        None or a None entry: zeros.
    scan : bool, default=False
        Build every layer as a Scan even where the LSTM/GRU operator would do
        (for runtimes without those operators). GRU networks always use the
        GRU operator.

    Returns
    -------
    out : str
        (batch, time, D * output_size), zero past each sequence's length.
    final_state : tuple of str
        One per state: (num_layers * D, batch, units), the state at each
        sequence's last step (the reverse direction's at its first).
    """
    _check_network(net, "add_network")
    state = tuple(state) if state is not None else (None,) * len(net.state_names)
    if len(state) != len(net.state_names):
        raise ValueError(f"state must name {len(net.state_names)} tensors "
                         f"{net.state_names}, got {len(state)}")
    x = graph.op("Transpose", [X], perm=[1, 0, 2], name="x_time_major")   # (T, B, I)
    use_scan = isinstance(net, LSTM) and (scan or _uses_scan(net))
    if use_scan:
        build = _ScanStack(graph, net, x, lengths)
    else:
        build = _OperatorStack(graph, net, lengths)
    finals = [[] for _ in net.state_names]
    for layer in range(net.num_layers):
        x, layer_finals = build.layer(layer, x, state)
        for acc, f in zip(finals, layer_finals):
            acc.extend(f)
    out = graph.op("Transpose", [x], perm=[1, 0, 2], name="out")           # (B, T, D*P)
    finals = tuple(f[0] if len(f) == 1 else graph.op("Concat", f, axis=0, name=f"{s}_n")
                   for f, s in zip(finals, net.state_names))
    return out, finals


def _direction_params(net, layer, d):
    """One direction's parameters in float32, by kind (weight_ih, ...)."""
    return {kind: np.asarray(net.params[param_name(kind, layer, d)], np.float32)
            for kind in net._cell_shapes(layer)}


def _lstm_blocks(net):
    return _LSTM_BLOCKS[net.coupled_gates]


def _split_blocks(array, names):
    return dict(zip(names, np.split(array, len(names))))


def _state_slice(graph, state, start, stop):
    """state[start:stop] along axis 0."""
    const = lambda v: graph.constant("idx", [v], np.int64)   # noqa: E731
    return graph.op("Slice", [state, const(start), const(stop), const(0)], name="state_slice")


# -- the LSTM and GRU operators --------------------------------------------------------

def _onnx_lstm_weights(p, coupled_gates):
    """ONNX LSTM W, R, B (Wb | Rb) and P of one direction from clstm's parameters."""
    blocks = _LSTM_BLOCKS[coupled_gates]

    def reorder(a):
        parts = _split_blocks(a, blocks)
        parts.setdefault("f", np.zeros_like(parts["i"]))   # ignored under input_forget
        return np.concatenate([parts[k] for k in _ONNX_LSTM_BLOCKS])

    W, R = reorder(p["weight_ih"]), reorder(p["weight_hh"])
    B = np.concatenate([reorder(p["bias_ih"]), reorder(p["bias_hh"])])
    P = None
    if "weight_peephole" in p:
        gates = ("i", "o") if coupled_gates else ("i", "f", "o")
        peep = _split_blocks(p["weight_peephole"], gates)
        peep.setdefault("f", np.zeros_like(peep["i"]))
        P = np.concatenate([peep[k] for k in _ONNX_PEEPHOLES])
    return W, R, B, P


def _onnx_gru_weights(p):
    """ONNX GRU W, R, B (Wb | Rb) of one direction from torch's GRU parameters."""
    def reorder(a):
        parts = _split_blocks(a, _TORCH_GRU_BLOCKS)
        return np.concatenate([parts[k] for k in _ONNX_GRU_BLOCKS])
    return (reorder(p["weight_ih"]), reorder(p["weight_hh"]),
            np.concatenate([reorder(p["bias_ih"]), reorder(p["bias_hh"])]), None)


class _OperatorStack:
    """Layers as ONNX LSTM / GRU nodes (time-major, layout 0)."""

    def __init__(self, graph, net, lengths):
        self.graph, self.net = graph, net
        self.lstm = isinstance(net, LSTM)
        self.seq_lens = "" if lengths is None else graph.op(
            "Cast", [lengths], to=graph.onnx.TensorProto.INT32, name="sequence_lens")

    def layer(self, layer, x, state):
        g, net = self.graph, self.net
        D = net.num_directions
        tag = f"l{layer}"
        weights = []
        for d in range(D):
            p = _direction_params(net, layer, d)
            weights.append(_onnx_lstm_weights(p, net.coupled_gates) if self.lstm
                           else _onnx_gru_weights(p))
        W, R, B, P = ([w[k] for w in weights] for k in range(4))
        inputs = [x, g.constant(f"{tag}_W", W), g.constant(f"{tag}_R", R),
                  g.constant(f"{tag}_B", B), self.seq_lens]
        for s in state:
            inputs.append("" if s is None else _state_slice(g, s, layer * D, (layer + 1) * D))
        attributes = {"hidden_size": net.hidden_size,
                      "direction": "bidirectional" if D == 2 else "forward"}
        if self.lstm:
            inputs.append("" if P[0] is None else g.constant(f"{tag}_P", P))
            attributes["input_forget"] = int(net.coupled_gates)
            Y, *finals = g.op("LSTM", inputs, n_outputs=3, name=f"{tag}_lstm", **attributes)
        else:
            attributes["linear_before_reset"] = 1
            Y, *finals = g.op("GRU", inputs, n_outputs=2, name=f"{tag}_gru", **attributes)
        # Y: (T, D, B, H) -> (T, B, D*H)
        if D == 1:
            y = g.op("Squeeze", [Y, g.constant("axes", [1], np.int64)], name=f"{tag}_y")
        else:
            y = g.op("Transpose", [Y], perm=[0, 2, 1, 3], name=f"{tag}_y")
            y = g.op("Reshape", [y, g.constant("shape", [0, 0, -1], np.int64)],
                     name=f"{tag}_y")
        return y, [[f] for f in finals]


# -- Scan over basic operators (projection, layer norm) ------------------------------------

class _ScanStack:
    """LSTM layers as one Scan per direction over basic operators."""

    def __init__(self, graph, net, x, lengths):
        self.graph, self.net = graph, net
        g = graph
        self.mask = None
        shape = g.op("Shape", [x], name="x_shape")                   # (T, B, I)
        if lengths is not None:
            # mask[t, b, 0] = t < lengths[b]
            T = g.op("Gather", [shape, g.constant("zero", 0, np.int64)], axis=0, name="T")
            steps = g.op("Range", [g.constant("zero", 0, np.int64), T,
                                   g.constant("one", 1, np.int64)], name="steps")
            steps = g.op("Unsqueeze", [steps, g.constant("axes", [1], np.int64)], name="steps")
            mask = g.op("Less", [steps, lengths], name="running")                 # (T, B)
            self.mask = g.op("Unsqueeze", [mask, g.constant("axes", [2], np.int64)],
                             name="running")
        self.shape, self.batch = shape, None

    def _zeros(self, units):
        """A (batch, units) float zero state."""
        g = self.graph
        if self.batch is None:
            self.batch = g.op("Slice", [self.shape, g.constant("idx", [1], np.int64),
                                        g.constant("idx", [2], np.int64)], name="batch")
        shape = g.op("Concat", [self.batch, g.constant("units", [units], np.int64)], axis=0,
                     name="state_shape")
        value = g.onnx.helper.make_tensor("value", g.onnx.TensorProto.FLOAT, [1], [0.0])
        return g.op("ConstantOfShape", [shape], value=value, name="zeros")

    def layer(self, layer, x, state):
        g, net = self.graph, self.net
        D, H, P = net.num_directions, net.hidden_size, net.output_size
        outs, finals = [], [[], []]
        for d in range(D):
            tag = f"l{layer}" + ("_reverse" if d else "")
            p = _direction_params(net, layer, d)
            # the input product of every step at once: (T, B, G)
            a = g.op("MatMul", [x, g.constant(f"{tag}_W_ih_T", p["weight_ih"].T)],
                     name=f"{tag}_xw")
            bias = p["bias_ih"] + p["bias_hh"]
            if net.layer_norm:
                a = g.op("LayerNormalization",
                         [a, g.constant(f"{tag}_ln_ih", p["weight_ln_ih"]),
                          g.constant(f"{tag}_bias", bias)],
                         axis=-1, epsilon=LN_EPS, name=f"{tag}_a")
            else:
                a = g.op("Add", [a, g.constant(f"{tag}_bias", bias)], name=f"{tag}_a")
            k = layer * D + d
            init = []
            for s, units in zip(state, (P, H)):
                if s is None:
                    init.append(self._zeros(units))
                else:
                    init.append(g.op("Gather", [s, g.constant("idx", k, np.int64)], axis=0,
                                     name="state0"))
            body = self._body(tag, p)
            scan_inputs = [a] + ([self.mask] if self.mask is not None else [])
            h_T, c_T, y = g.op("Scan", init + scan_inputs, n_outputs=3, name=f"{tag}_scan",
                               body=body, num_scan_inputs=len(scan_inputs),
                               scan_input_directions=[d] * len(scan_inputs),
                               scan_output_directions=[d])
            outs.append(y)
            for acc, f in zip(finals, (h_T, c_T)):
                acc.append(g.op("Unsqueeze", [f, g.constant("axes", [0], np.int64)],
                                name=f"{tag}_final"))
        y = outs[0] if D == 1 else g.op("Concat", outs, axis=-1, name=f"l{layer}_y")
        return y, finals

    def _body(self, tag, p):
        """One LSTM step (clstm._reference.lstm_step_forward) as a Scan body."""
        net = self.net
        H, P, G = net.hidden_size, net.output_size, net._gate_count()
        b = self.graph.subgraph(f"{tag}_step")
        h = b.input(f"{tag}_h_prev", "float32", ["batch", P], fresh=True)
        c = b.input(f"{tag}_c_prev", "float32", ["batch", H], fresh=True)
        a = b.input(f"{tag}_a_t", "float32", ["batch", G], fresh=True)
        running = (b.input(f"{tag}_running_t", "bool", ["batch", 1], fresh=True)
                   if self.mask is not None else None)
        const = lambda name, value: b.constant(f"{tag}_{name}", value)   # noqa: E731

        r = b.op("MatMul", [h, const("W_hh_T", p["weight_hh"].T)], name="hw")
        if net.layer_norm:
            r = b.op("LayerNormalization", [r, const("ln_hh", p["weight_ln_hh"])],
                     axis=-1, epsilon=LN_EPS, name="hw_ln")
        z = b.op("Add", [a, r], name="gates")
        names = _lstm_blocks(net)
        parts = dict(zip(names, b.op("Split", [z, b.constant("split", [H] * len(names),
                                                              np.int64)],
                                     n_outputs=len(names), axis=-1, name="gate")))
        peep = {}
        if net.peephole:
            peep = _split_blocks(p["weight_peephole"], [k for k in names if k != "g"])
            peep = {k: const(f"p_{k}", v) for k, v in peep.items()}
            for k in ("i", "f"):
                if k in parts:
                    parts[k] = b.op("Add", [parts[k], b.op("Mul", [c, peep[k]])], name=k)
        i = b.op("Sigmoid", [parts["i"]], name="i")
        if net.coupled_gates:
            f = b.op("Sub", [b.constant("one", 1.0), i], name="f")
        else:
            f = b.op("Sigmoid", [parts["f"]], name="f")
        gg = b.op("Tanh", [parts["g"]], name="g")
        c_new = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, gg])], name="c")
        o = parts["o"]
        if net.peephole:
            o = b.op("Add", [o, b.op("Mul", [c_new, peep["o"]])], name="o")
        o = b.op("Sigmoid", [o], name="o")
        cell = c_new
        if net.layer_norm:
            cell = b.op("LayerNormalization", [c_new, const("ln_c", p["weight_ln_c"]),
                                               const("ln_c_bias", p["bias_ln_c"])],
                        axis=-1, epsilon=LN_EPS, name="c_ln")
        h_new = b.op("Mul", [o, b.op("Tanh", [cell])], name="m")
        if net.proj_size:
            h_new = b.op("MatMul", [h_new, const("W_hr_T", p["weight_hr"].T)], name="h")
        if running is None:
            outputs = (b.op("Identity", [h_new], name="h"), b.op("Identity", [c_new], name="c"),
                       b.op("Identity", [h_new], name="y"))
        else:
            # past a sequence's length: the state stays, the output is zero
            outputs = (b.op("Where", [running, h_new, h], name="h"),
                       b.op("Where", [running, c_new, c], name="c"),
                       b.op("Where", [running, h_new, b.constant("zero", 0.0)], name="y"))
        for name, units in zip(outputs, (P, H, P)):
            b.output(name, "float32", ["batch", units])
        return b.make_graph()


# =====================================================================================
# Export
# =====================================================================================

def export_onnx(net, path, *, lengths=True, initial_states=False, opset=OPSET):
    """Export a network (clstm.LSTM or clstm.GRU) or a fitted estimator as an ONNX model.

    A fitted ``LSTMRegressor`` / ``LSTMClassifier`` exports its whole
    ``predict`` as one graph: input standardisation, the network, the Dense
    head and the target de-standardisation (regressor: output ``variable``,
    as ``predict``) or the sigmoid/softmax (classifier: outputs ``label`` and
    ``probabilities``, as ``predict`` and ``predict_proba``). Its input ``X``
    is 3-D (batch, time, n_features) float32 (a univariate 2-D X of the
    estimator is X[..., None] here), with ``lengths`` for ragged batches
    padded to a common length; with ``return_sequences=True`` the outputs
    are per step, and the values past a sequence's length are padding. An
    attention pooling head (``attention=``) exports as basic operators
    (MatMul, Tanh, a Softmax over the valid steps, ReduceSum). An estimator
    on token ids (``vocab_size``, and ``LSTMLanguageModel``) takes ``X`` as
    (batch, time) int64 ids, looked up in its embedding table by a Gather;
    the padding past each length may hold any id, and an id outside
    ``[0, vocab_size)`` within a length is an error of onnxruntime. An
    ``LSTMSeq2SeqRegressor`` is refused (its decoder loop is not exported).

    Graph inputs: ``X`` (batch, time, input_size) float32, batch-first as in
    clstm; ``lengths`` (batch,) int64 if `lengths`; ``h0`` (and ``c0`` for an
    LSTM), of shape (num_layers * D, batch, units), if `initial_states`.
    Outputs: ``out`` (batch, time, D * output_size), ``h_n`` (and ``c_n``):
    the results of ``net.forward(X, h0, c0, lengths)``. Batch and time are
    dynamic.

    Plain, peephole and coupled-gate LSTMs (any combination) become ONNX LSTM
    nodes, GRUs GRU nodes (``linear_before_reset=1``), one per layer.
    Projection (``proj_size``) and layer normalisation have no ONNX operator:
    those networks export as a Scan over time of basic operators
    (MatMul, Sigmoid, Tanh, LayerNormalization, Where), which onnxruntime runs
    with the same results, more slowly. :func:`import_onnx` reads back the
    LSTM/GRU nodes, not the Scan graphs.

    The graph is float32: onnxruntime's LSTM and GRU kernels have no float64
    version, so a float64 network is exported with its parameters rounded to
    float32 (expect float32 accuracy). Dropout is an inference no-op and is
    not exported.

    Parameters
    ----------
    net : clstm.LSTM or clstm.GRU
    path : str, os.PathLike or None
        Where to write the model; written atomically (a temporary file in the
        same directory, then renamed). None: only return the model.
    lengths : bool, default=True
        Add the ``lengths`` input (ragged batches; packed-sequence semantics).
        Without it every sequence runs all steps.
    initial_states : bool, default=False
        Add the initial states as inputs; without them they are zeros.
    opset : int, default=17
        The ai.onnx opset to declare: from 17 to the newest the installed
        onnx knows (the operators used keep their meaning; checked with
        onnxruntime up to opset 28).

    Returns
    -------
    onnx.ModelProto
        The model, checked by ``onnx.checker.check_model(full_check=True)``.
    """
    onnx = _onnx("clstm.export_onnx")
    estimator = _as_fitted_estimator(net)
    if estimator is None:
        _check_network(net, "export_onnx")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < OPSET \
            or opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an int in [{OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}] (this onnx), got {opset!r}")
    if estimator is not None:
        if initial_states:
            raise ValueError("initial_states applies to networks; an estimator's graph "
                             "starts from zero states, as its predict does")
        model = _estimator_model(estimator, lengths=bool(lengths), opset=int(opset))
    else:
        model = _network_model(net, lengths=bool(lengths), initial_states=bool(initial_states),
                               opset=int(opset))
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        _save_atomically(model.SerializeToString(), path)
    return model


def _network_model(net, lengths, initial_states, opset, scan=False):
    g = OnnxGraph("clstm_" + type(net).__name__.lower())
    D, L = net.num_directions, net.num_layers
    sizes = net._state_sizes()
    names = ["out"] + [f"{s}_n" for s in net.state_names]
    g.reserve(*names)
    X = g.input("X", "float32", ["batch", "time", net.input_size])
    seq = g.input("lengths", "int64", ["batch"]) if lengths else None
    state = None
    if initial_states:
        state = tuple(g.input(f"{s}0", "float32", [L * D, "batch", sizes[s]])
                      for s in net.state_names)
    out, finals = add_network(g, net, X, seq, state, scan=scan)
    shapes = [["batch", "time", D * net.output_size]] + [[L * D, "batch", sizes[s]]
                                                         for s in net.state_names]
    for name, value, shape in zip(names, (out,) + finals, shapes):
        g.output(g.op("Identity", [value], outputs=[name]), "float32", shape)
    inputs = (["X (batch, time, %d) float32" % net.input_size]
              + (["lengths (batch,) int64"] if lengths else [])
              + ([f"{s}0" for s in net.state_names] if initial_states else []))
    doc = (f"{net!r} exported by clstm {__version__}. Inputs: {', '.join(inputs)}. "
           f"Outputs: {', '.join(names)} (as net.forward).")
    return g.make_model(opset, doc_string=doc, metadata={"clstm.network": repr(net)})


def _as_fitted_estimator(obj):
    """`obj` if it is a clstm estimator (checked fitted), else None."""
    from clstm._base import BaseLSTMEstimator      # scikit-learn: only when exporting
    if not isinstance(obj, BaseLSTMEstimator):
        return None
    from sklearn.utils.validation import check_is_fitted
    check_is_fitted(obj)
    return obj


def _estimator_model(est, lengths, opset):
    """The graph of a fitted estimator's predict (and predict_proba)."""
    model = est._model
    if getattr(model, "decoder", None) is not None:
        raise ValueError(f"{type(est).__name__} cannot be exported to ONNX: its decoder feeds "
                         "each prediction back step by step (a loop this export does not "
                         "build); export the encoder and decoder networks (est.lstm_, "
                         "est.decoder_) with export_onnx and run the loop outside")
    net, classifier = model.network, hasattr(est, "classes_")
    F = net.input_size          # a univariate estimator's 2-D X is X[..., None] here
    g = OnnxGraph("clstm_" + type(est).__name__.lower())
    names = ["label", "probabilities"] if classifier else ["variable"]
    g.reserve(*names)
    layer = getattr(model, "input_layer", None)
    if layer is None:
        X = g.input("X", "float32", ["batch", "time", F])
        seq = g.input("lengths", "int64", ["batch"]) if lengths else None
    else:
        # token ids (B, T) int64 -> rows of the embedding table; the padding past
        # each length may hold anything: it is looked up as id 0, and the network
        # never reads it. An id outside [0, vocab_size) within a length is an
        # error of onnxruntime's Gather (a negative one is sent there as
        # vocab_size: Gather would otherwise count it from the end)
        ids = g.input("X", "int64", ["batch", "time"])
        seq = g.input("lengths", "int64", ["batch"]) if lengths else None
        ids = g.op("Where", [g.op("Less", [ids, g.constant("no_id", 0, np.int64)],
                                  name="negative_ids"),
                             g.constant("vocab_size", layer.vocab_size, np.int64), ids],
                   name="ids_checked")
        if seq is not None:
            ids = g.op("Where", [_valid_steps(g, ids, seq), ids,
                                 g.constant("padding_id", 0, np.int64)], name="ids_in_lengths")
        X = g.op("Gather", [g.constant("embedding", layer.weight), ids], axis=0,
                 name="embedded")
    # input standardisation, as fit saw it (padding is ignored by the network)
    x_mean, x_scale = est._x_stats
    if x_mean is not None:
        X = g.op("Sub", [X, g.constant("x_mean", x_mean)], name="x_centred")
        X = g.op("Div", [X, g.constant("x_scale", x_scale)], name="x_standardised")
    out, finals = add_network(g, net, X, seq)
    # the head's input: every step's output, the attention pooling of them, or
    # the top layer's last h
    if model.return_sequences:
        feats = out
    elif model.attention is not None:
        feats = _add_attention_pooling(g, model.attention, out, seq)
    else:
        D, LD = net.num_directions, net.num_layers * net.num_directions
        h_n = finals[net.state_names.index("h")]
        top = g.op("Slice", [h_n, g.constant("top_start", [LD - D], np.int64),
                             g.constant("top_stop", [LD], np.int64),
                             g.constant("top_axis", [0], np.int64)], name="h_top")
        top = g.op("Transpose", [top], perm=[1, 0, 2], name="h_top_batch")   # (B, D, P)
        feats = g.op("Reshape", [top, g.constant(
            "feature_shape", [0, D * net.output_size], np.int64)], name="features")
    Z = g.op("MatMul", [feats, g.constant("head_weight", model.head_weight)], name="head_matmul")
    Z = g.op("Add", [Z, g.constant("head_bias", model.head_bias)], name="head")
    step_axes = ["batch", "time"] if model.return_sequences else ["batch"]
    if not classifier:
        y_mean, y_scale = est._y_stats
        if y_mean is not None:
            Z = g.op("Mul", [Z, g.constant("y_scale", y_scale)], name="y_scaled")
            Z = g.op("Add", [Z, g.constant("y_mean", y_mean)], name="y_restored")
        shape = step_axes + ([] if est._y_1d else [est.n_outputs_])
        target_shape = tuple(getattr(est, "_y_shape", ()))
        if est._y_1d:
            g.op("Squeeze", [Z, g.constant("last_axis", [-1], np.int64)], outputs=["variable"])
        elif len(target_shape) == 2:        # (horizon, k) targets: predict's (n, h, k)
            shape = step_axes + list(target_shape)
            g.op("Reshape", [Z, g.constant("target_shape", [0] * len(step_axes)
                                           + list(target_shape), np.int64)],
                 outputs=["variable"])
        else:
            g.op("Identity", [Z], outputs=["variable"])
        g.output("variable", "float32", shape)
    else:
        classes = np.asarray(est.classes_)
        if model.n_outputs == 1:            # two classes: sigmoid of one logit
            p = g.op("Sigmoid", [Z], name="p_positive")
            q = g.op("Sub", [g.constant("one", 1.0), p], name="p_negative")
            g.op("Concat", [q, p], outputs=["probabilities"], axis=-1)
        else:
            g.op("Softmax", [Z], outputs=["probabilities"], axis=-1)
        code = g.op("ArgMax", ["probabilities"], axis=-1, keepdims=0, name="class_code")
        if classes.dtype.kind in "US":
            table, elem = g.constant("classes", classes.astype(object), object), "str"
        elif classes.dtype.kind == "b":
            table, elem = g.constant("classes", classes, bool), "bool"
        elif classes.dtype.kind in "iu":
            table, elem = g.constant("classes", classes, np.int64), "int64"
        else:
            table, elem = g.constant("classes", classes, np.float64), "float64"
        g.op("Gather", [table, code], outputs=["label"], axis=0)
        g.output("label", elem, step_axes)
        g.output("probabilities", "float32", step_axes + [classes.size])
    doc = (f"{type(est).__name__} ({net!r}) exported by clstm {__version__}. Inputs: X "
           f"(batch, time, {F}) float32" + (", lengths (batch,) int64" if lengths else "")
           + f". Outputs: {', '.join(names)} (as predict" + (" / predict_proba" if classifier
                                                              else "") + ").")
    return g.make_model(opset, doc_string=doc,
                        metadata={"clstm.estimator": type(est).__name__,
                                  "clstm.network": repr(net)})


def _valid_steps(g, batch_major, lengths):
    """A (B, T) bool value: step t of sequence b lies within lengths[b]
    (`batch_major` is any (B, T, ...) value of the graph)."""
    n_steps = g.op("Gather", [g.op("Shape", [batch_major], name="batch_major_shape"),
                              g.constant("time_axis", 1, np.int64)], axis=0, name="n_steps")
    steps = g.op("Range", [g.constant("zero", 0, np.int64), n_steps,
                           g.constant("one_step", 1, np.int64)], name="steps")
    return g.op("Less", [g.op("Unsqueeze", [steps, g.constant("batch_axis", [0], np.int64)],
                              name="steps_row"),
                         g.op("Unsqueeze", [lengths, g.constant("step_axis", [1], np.int64)],
                              name="lengths_column")], name="valid_steps")


def _add_attention_pooling(g, attention, out, lengths):
    """Nodes of clstm._attention.AttentionPooling over `out` (B, T, d), masked by
    `lengths` (B,) (None: every step valid); returns the context (B, d)."""
    p = attention.params
    if attention.kind == "additive":
        pre = g.op("MatMul", [out, g.constant("attention_weight", p["weight"])],
                   name="attention_pre_matmul")
        pre = g.op("Add", [pre, g.constant("attention_bias", p["bias"])], name="attention_pre")
        u = g.op("Tanh", [pre], name="attention_hidden")
        scores = g.op("MatMul", [u, g.constant("attention_score_vector", p["score_vector"])],
                      name="attention_scores")                                # (B, T)
    else:
        query = np.asarray(p["query"], np.float64) / np.sqrt(attention.input_size)
        scores = g.op("MatMul", [out, g.constant("attention_query", query)],
                      name="attention_scores")
    if lengths is not None:
        # steps t >= lengths[b] get score -inf: weight exactly 0 after the softmax
        valid = _valid_steps(g, out, lengths)
        scores = g.op("Where", [valid, scores, g.constant("minus_inf", -np.inf)],
                      name="attention_masked_scores")
    weights = g.op("Softmax", [scores], axis=1, name="attention_weights")
    weighted = g.op("Mul", [g.op("Unsqueeze", [weights, g.constant("feature_axis", [2], np.int64)],
                                 name="attention_weights_3d"), out], name="attention_weighted")
    return g.op("ReduceSum", [weighted, g.constant("time_axes", [1], np.int64)], keepdims=0,
                name="attention_context")


def _save_atomically(data, path):
    """Write `data` to `path` atomically (clstm's one atomic writer: a
    temporary file beside it, then os.replace)."""
    write_atomically(path, lambda f: f.write(data))


# =====================================================================================
# Import
# =====================================================================================

_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}


def import_onnx(model, *, dtype="float32"):
    """A clstm network from the LSTM or GRU nodes of an ONNX model.

    Each LSTM (or GRU) node is one layer, in graph order; node k + 1 must
    read (through any reshaping) the output of node k. Weights must be
    initializers or Constant nodes.

    Mapped: ``W``, ``R``, ``B`` (absent: zero biases), LSTM ``P`` (present
    and non-zero in any layer: ``peephole=True``), ``input_forget=1``
    (``coupled_gates=True``; the ignored forget rows are dropped),
    ``direction`` forward or bidirectional, GRU ``linear_before_reset=1``.
    Refused with a ValueError: other activations, ``activation_alpha`` /
    ``activation_beta``, ``clip``, ``direction="reverse"``, GRU
    ``linear_before_reset=0`` (not torch's GRU), nodes that differ in kind,
    hidden size, direction or ``input_forget``, and graphs without LSTM/GRU
    nodes (such as clstm's Scan exports of projection and layer-norm
    networks). ``layout`` and ``sequence_lens`` do not affect the weights.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
    dtype : {"float32", "float64"}, default="float32"

    Returns
    -------
    clstm.LSTM or clstm.GRU
    """
    onnx = _onnx("clstm.import_onnx")
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_model_from_string(bytes(model))
    elif isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    elif not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be a path, bytes or an onnx.ModelProto, got "
                        f"{type(model).__name__}")
    graph = model.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                values[node.output[0]] = onnx.numpy_helper.to_array(attr["value"].t)
    layers = [n for n in graph.node if n.op_type in ("LSTM", "GRU")
              and n.domain in ("", "ai.onnx")]
    if not layers:
        kinds = sorted({n.op_type for n in graph.node})
        raise ValueError(
            "the ONNX graph has no LSTM or GRU node to import (its operators: "
            f"{', '.join(kinds) or 'none'}); clstm's Scan exports of projection and "
            "layer-norm networks cannot be read back")
    kinds = {n.op_type for n in layers}
    if len(kinds) > 1:
        raise ValueError("the ONNX graph mixes LSTM and GRU nodes; a clstm network has "
                         "one cell kind")
    op = layers[0].op_type
    _check_chain(graph, layers)
    specs = [_read_node(node, values, onnx) for node in layers]
    first = specs[0]
    for k, s in enumerate(specs[1:], 1):
        for key in ("hidden_size", "num_directions", "input_forget"):
            if s[key] != first[key]:
                raise ValueError(f"the ONNX {op} nodes differ in {key} ({first[key]} in "
                                 f"{layers[0].name!r}, {s[key]} in {layers[k].name!r}); a "
                                 f"clstm network has one value for all layers")
    H, D = first["hidden_size"], first["num_directions"]
    for k, s in enumerate(specs[1:], 1):
        if s["input_size"] != D * H:
            raise ValueError(f"ONNX node {layers[k].name!r} reads {s['input_size']} inputs "
                             f"per step; stacked on the one before it should read {D * H}")
    kwargs = dict(num_layers=len(specs), bidirectional=D == 2, dtype=dtype)
    if op == "LSTM":
        net = LSTM(first["input_size"], H, coupled_gates=bool(first["input_forget"]),
                   peephole=any(s["P"] is not None and np.any(s["P"]) for s in specs), **kwargs)
    else:
        net = GRU(first["input_size"], H, **kwargs)
    state = {}
    for layer, s in enumerate(specs):
        for d in range(D):
            p = (_lstm_params(s, d, net) if op == "LSTM" else _gru_params(s, d))
            state.update({param_name(kind, layer, d): v for kind, v in p.items()})
    return net.load_state_dict(state)


def _read_node(node, values, onnx):
    """Weights and attributes of one LSTM/GRU node, checked."""
    op, where = node.op_type, f"ONNX {node.op_type} node {node.name!r}"
    attr = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for key in ("clip", "activation_alpha", "activation_beta"):
        if key in attr:
            raise ValueError(f"{where} has the attribute {key}={attr[key]!r}; clstm's cells "
                             f"have no {key}")
    if "activations" in attr:
        acts = [a.decode() if isinstance(a, bytes) else a for a in attr["activations"]]
        default = _DEFAULT_ACTIVATIONS[op]
        n_dirs = max(1, len(acts) // len(default))
        if [a.lower() for a in acts] != default * n_dirs:
            raise ValueError(f"{where} has activations {acts}; clstm supports only the "
                             f"defaults {[a.capitalize() for a in default]} per direction")
    direction = attr.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where} has direction={direction!r}; clstm networks run forward "
                         "or bidirectional")
    if op == "GRU" and attr.get("linear_before_reset", 0) != 1:
        raise ValueError(f"{where} has linear_before_reset=0 (the reset gate applied before "
                         "the recurrent product); clstm's GRU is torch's, "
                         "linear_before_reset=1")
    inputs = list(node.input) + [""] * 8

    def value(k, name):
        if not inputs[k]:
            return None
        if inputs[k] not in values:
            raise ValueError(f"{where}: its {name} ({inputs[k]!r}) is computed in the graph; "
                             "import_onnx reads weights stored as initializers or Constant "
                             "nodes")
        return np.asarray(values[inputs[k]], np.float64)

    W, R, B = value(1, "W"), value(2, "R"), value(3, "B")
    P = value(7, "P") if op == "LSTM" else None
    if W is None or R is None:
        raise ValueError(f"{where} has no W or R input")
    D = 2 if direction == "bidirectional" else 1
    n_gates = 4 if op == "LSTM" else 3
    H = R.shape[-1]
    if attr.get("hidden_size", H) != H:
        raise ValueError(f"{where} has hidden_size={attr['hidden_size']} but R of shape "
                         f"{R.shape}")
    expected = {"W": (D, n_gates * H, W.shape[-1]), "R": (D, n_gates * H, H),
                "B": (D, 2 * n_gates * H), "P": (D, 3 * H)}
    for name, v in (("W", W), ("R", R), ("B", B), ("P", P)):
        if v is not None and v.shape != expected[name]:
            raise ValueError(f"{where}: {name} has shape {v.shape}, expected "
                             f"{expected[name]} for hidden_size={H}, direction={direction}")
    if B is None:
        B = np.zeros(expected["B"])
    return {"W": W, "R": R, "B": B, "P": P, "hidden_size": H, "num_directions": D,
            "input_size": W.shape[-1], "input_forget": int(attr.get("input_forget", 0))}


def _lstm_params(s, d, net):
    blocks = _lstm_blocks(net)
    H = s["hidden_size"]

    def reorder(a):
        parts = _split_blocks(a, _ONNX_LSTM_BLOCKS)
        return np.concatenate([parts[k] for k in blocks])

    b_ih, b_hh = np.split(s["B"][d], 2)
    p = {"weight_ih": reorder(s["W"][d]), "weight_hh": reorder(s["R"][d]),
         "bias_ih": reorder(b_ih), "bias_hh": reorder(b_hh)}
    if net.peephole:
        peep = dict(zip(_ONNX_PEEPHOLES, np.split(s["P"][d] if s["P"] is not None
                                                  else np.zeros(3 * H), 3)))
        p["weight_peephole"] = np.concatenate([peep[k] for k in blocks if k != "g"])
    return p


def _gru_params(s, d):
    def reorder(a):
        parts = _split_blocks(a, _ONNX_GRU_BLOCKS)
        return np.concatenate([parts[k] for k in _TORCH_GRU_BLOCKS])

    b_ih, b_hh = np.split(s["B"][d], 2)
    return {"weight_ih": reorder(s["W"][d]), "weight_hh": reorder(s["R"][d]),
            "bias_ih": reorder(b_ih), "bias_hh": reorder(b_hh)}


def _check_chain(graph, layers):
    """Each LSTM/GRU node must depend on the one before it (a stack, not a fan)."""
    producer = {o: n for n in graph.node for o in n.output}

    def ancestors(node):
        seen, todo = set(), list(node.input)
        while todo:
            name = todo.pop()
            src = producer.get(name)
            if src is None or id(src) in seen:
                continue
            seen.add(id(src))
            todo.extend(src.input)
        return seen

    for prev, node in zip(layers, layers[1:]):
        if id(prev) not in ancestors(node):
            raise ValueError(f"ONNX {node.op_type} node {node.name!r} does not read the output "
                             f"of {prev.name!r}; import_onnx reads a stack of layers, each on "
                             "the one before")
