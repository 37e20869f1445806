"""ONNX Runtime worker: a graph of ONNX ``LSTM`` or ``GRU`` operators (inference only).

The graph is built with ``onnx.helper``: one ``LSTM`` node per layer (ONNX gate
order i, o, f, c; weights reordered from torch's i, f, g, o), a ``Squeeze``
between layers. It takes time-major input ``(T, B, I)`` and returns ONNX's
``Y`` ``(T, 1, B, H)``: no transposes in the timed call, which favours the
peer (clstm's timed forward includes its own batch-first <-> time-major copies).

The cells: peepholes go to the LSTM node's ``P`` input (blocks i, o, f; clstm's
``weight_peephole`` is i, f, o, or i, o with coupled gates); coupled gates (CIFG)
are ``input_forget=1``, ONNX still wants 4H rows so the forget rows are zeros.
The GRU is ONNX's ``GRU`` node with ``linear_before_reset=1`` (torch.nn.GRU's
semantics), gates reordered from torch's r, z, n to ONNX's z, r, h.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from common import CELLS

_N_THREADS = 1
# Source blocks (torch / clstm row order) of each ONNX block; None: a block of zeros.
_ORDER = {
    "lstm": (0, 3, 1, 2),            # i, f, g, o -> i, o, f, c
    "lstm-coupled": (0, 2, None, 1),  # i, g, o -> i, o, f (unused: zeros), c
    "gru": (1, 0, 2),                # r, z, n -> z, r, h
}
# Peephole blocks -> ONNX P (i, o, f)
_PEEP_ORDER = {"lstm": (0, 2, 1), "lstm-coupled": (0, 1, None)}


def setup(n_threads):
    global _N_THREADS
    _N_THREADS = n_threads


def version():
    return f"onnxruntime {ort.__version__}, onnx {onnx.__version__}"


def supports(cell):
    if cell.proj or cell.layer_norm:
        raise NotImplementedError(f"ONNX's LSTM operator has no {cell.title}")


def _reorder(w, H, order=_ORDER["lstm"]):
    zeros = np.zeros((H,) + w.shape[1:], w.dtype)
    return np.concatenate([zeros if k is None else w[k * H:(k + 1) * H] for k in order], axis=0)


def build_graph(cfg, params, cell=CELLS["lstm"]):
    H = cfg.H
    key = "gru" if cell.kind == "gru" else ("lstm-coupled" if cell.coupled_gates else "lstm")
    order = _ORDER[key]
    attrs = {"hidden_size": H, "direction": "forward"}
    if cell.kind == "gru":
        attrs["linear_before_reset"] = 1
    elif cell.coupled_gates:
        attrs["input_forget"] = 1
    nodes, inits = [], []
    x_name = "X"
    for k in range(cfg.L):
        W = _reorder(params[f"weight_ih_l{k}"], H, order)[None]             # (1, 4H, I)
        R = _reorder(params[f"weight_hh_l{k}"], H, order)[None]             # (1, 4H, H)
        Bias = np.concatenate([_reorder(params[f"bias_ih_l{k}"], H, order),
                               _reorder(params[f"bias_hh_l{k}"], H, order)])[None]   # (1, 8H)
        arrays = [(f"W{k}", W), (f"R{k}", R), (f"B{k}", Bias)]
        inputs = [x_name, f"W{k}", f"R{k}", f"B{k}"]
        if cell.peephole:       # optional inputs sequence_lens, initial_h, initial_c left empty
            arrays.append((f"P{k}", _reorder(params[f"weight_peephole_l{k}"], H, _PEEP_ORDER[key])[None]))
            inputs += ["", "", "", f"P{k}"]
        for name, arr in arrays:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        y_name = "Y" if k == cfg.L - 1 else f"Y{k}"
        nodes.append(helper.make_node("GRU" if cell.kind == "gru" else "LSTM", inputs, [y_name],
                                      **attrs))
        if k < cfg.L - 1:
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"ax{k}"))
            nodes.append(helper.make_node("Squeeze", [y_name, f"ax{k}"], [f"S{k}"]))
            x_name = f"S{k}"
    graph = helper.make_graph(
        nodes, cell.kind,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [cfg.T, cfg.B, cfg.I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [cfg.T, 1, cfg.B, H])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


class Runner:
    def __init__(self, cfg, params, data, n_threads, cell=CELLS["lstm"]):
        self.cfg = cfg
        so = ort.SessionOptions()
        so.intra_op_num_threads = _N_THREADS
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(build_graph(cfg, params, cell).SerializeToString(), so,
                                         providers=["CPUExecutionProvider"])
        self.X = np.ascontiguousarray(data["X"].transpose(1, 0, 2))     # (T, B, I)

    def infer(self):
        return self.sess.run(None, {"X": self.X})[0]

    def as_numpy_out(self, Y):
        return np.ascontiguousarray(Y[:, 0].transpose(1, 0, 2))        # (B, T, H)
