"""ONNX Runtime worker: a graph of ONNX ``LSTM`` operators (inference only).

The graph is built with ``onnx.helper``: one ``LSTM`` node per layer (ONNX gate
order i, o, f, c; weights reordered from torch's i, f, g, o), a ``Squeeze``
between layers. It takes time-major input ``(T, B, I)`` and returns ONNX's
``Y`` ``(T, 1, B, H)``: no transposes in the timed call, which favours the
peer (clstm's timed forward includes its own batch-first <-> time-major copies).
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

_N_THREADS = 1
# torch gate blocks (i, f, g, o) -> ONNX (i, o, f, c)
_ORDER = (0, 3, 1, 2)


def setup(n_threads):
    global _N_THREADS
    _N_THREADS = n_threads


def version():
    return f"onnxruntime {ort.__version__}, onnx {onnx.__version__}"


def _reorder(w, H):
    return np.concatenate([w[k * H:(k + 1) * H] for k in _ORDER], axis=0)


def build_graph(cfg, params):
    H = cfg.H
    nodes, inits = [], []
    x_name = "X"
    for k in range(cfg.L):
        W = _reorder(params[f"weight_ih_l{k}"], H)[None]             # (1, 4H, I)
        R = _reorder(params[f"weight_hh_l{k}"], H)[None]             # (1, 4H, H)
        Bias = np.concatenate([_reorder(params[f"bias_ih_l{k}"], H),
                               _reorder(params[f"bias_hh_l{k}"], H)])[None]   # (1, 8H)
        for name, arr in ((f"W{k}", W), (f"R{k}", R), (f"B{k}", Bias)):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        y_name = "Y" if k == cfg.L - 1 else f"Y{k}"
        nodes.append(helper.make_node("LSTM", [x_name, f"W{k}", f"R{k}", f"B{k}"], [y_name],
                                      hidden_size=H, direction="forward"))
        if k < cfg.L - 1:
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"ax{k}"))
            nodes.append(helper.make_node("Squeeze", [y_name, f"ax{k}"], [f"S{k}"]))
            x_name = f"S{k}"
    graph = helper.make_graph(
        nodes, "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [cfg.T, cfg.B, cfg.I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [cfg.T, 1, cfg.B, H])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


class Runner:
    def __init__(self, cfg, params, data, n_threads):
        self.cfg = cfg
        so = ort.SessionOptions()
        so.intra_op_num_threads = _N_THREADS
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(build_graph(cfg, params).SerializeToString(), so,
                                         providers=["CPUExecutionProvider"])
        self.X = np.ascontiguousarray(data["X"].transpose(1, 0, 2))     # (T, B, I)

    def infer(self):
        return self.sess.run(None, {"X": self.X})[0]

    def as_numpy_out(self, Y):
        return np.ascontiguousarray(Y[:, 0].transpose(1, 0, 2))        # (B, T, H)
