"""clstm: a compiled LSTM for Python.

Typed Cython kernels over BLAS (scipy.linalg.cython_blas) for the forward
pass and exact backpropagation through time, in float32 and float64, with
the parameter layout of torch.nn.LSTM; scikit-learn estimators on top.

The estimators, persistence, windowing helper, datasets and the interop
functions (ONNX, Keras, torch) are imported on first use (PEP 562), so
``import clstm`` pays for neither scikit-learn nor any optional framework.
"""

import importlib

from clstm._version import __version__
from clstm._convlstm import ConvLSTM
from clstm._gru import GRU
from clstm._lstm import LSTM

_LAZY = {
    "LSTMRegressor": "clstm._estimators",
    "LSTMClassifier": "clstm._estimators",
    "LSTMSeq2SeqRegressor": "clstm._seq2seq",
    "ConvLSTMRegressor": "clstm._nowcast",
    "load": "clstm._estimators",
    "LSTMLanguageModel": "clstm._language",
    "CharTokenizer": "clstm._text",
    "EpochRecord": "clstm._base",
    "make_windows": "clstm._windows",
    "LookbackWindows": "clstm._windows",
    "datasets": "clstm.datasets",
    "export_onnx": "clstm.interop._onnx",
    "import_onnx": "clstm.interop._onnx",
    "interop": "clstm.interop",
    "optimizers": "clstm.optimizers",
}

__all__ = ["LSTM", "GRU", "ConvLSTM", "LSTMRegressor", "LSTMClassifier", "LSTMSeq2SeqRegressor",
           "LSTMLanguageModel", "CharTokenizer", "ConvLSTMRegressor", "EpochRecord", "load",
           "make_windows", "LookbackWindows",
           "datasets", "export_onnx", "import_onnx", "interop", "optimizers", "__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clstm' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"clstm.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
