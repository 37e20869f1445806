"""Moving networks between clstm and ONNX, Keras 3 and PyTorch.

* :func:`export_onnx` / :func:`import_onnx`: ONNX models (onnxruntime runs
  the exports); :class:`OnnxGraph` and :func:`add_network` build a network's
  nodes into a larger graph.
* :func:`to_keras` / :func:`from_keras`: ``keras.layers.LSTM`` / ``GRU``,
  ``Bidirectional`` and stacked ``Sequential`` models (Keras 3, any backend);
  fitted estimators as whole ``Sequential`` models (Normalization, recurrent
  layers, Dense head) and back (:func:`estimator_to_keras`,
  :func:`estimator_from_keras`).
* :func:`to_torch` / :func:`from_torch`: ``torch.nn.LSTM`` / ``torch.nn.GRU``;
  fitted estimators as an :class:`EstimatorModule` (standardisation, LSTM /
  GRU, Linear head) and back (:func:`estimator_to_torch`,
  :func:`estimator_from_torch`).

The frameworks are optional and imported on first call; without one, the
call raises an ImportError naming the extra that installs it
(``pip install 'clstm-learn[onnx]'``, ``[keras]``, ``[torch]``).
"""

from clstm.interop._keras import from_keras, to_keras
from clstm.interop._keras_estimators import estimator_from_keras, estimator_to_keras
from clstm.interop._onnx import OPSET, OnnxGraph, add_network, export_onnx, import_onnx
from clstm.interop._torch import from_torch, to_torch
from clstm.interop._torch_estimators import estimator_from_torch, estimator_to_torch

__all__ = ["export_onnx", "import_onnx", "OnnxGraph", "add_network", "OPSET",
           "to_keras", "from_keras", "to_torch", "from_torch", "estimator_to_keras",
           "estimator_from_keras", "estimator_to_torch", "estimator_from_torch"]


def __getattr__(name):
    # EstimatorModule, a torch.nn.Module subclass: defined (and torch imported)
    # on first use, so it is not in __all__ (a star import would need torch)
    if name == "EstimatorModule":
        from clstm.interop import _torch_estimators
        return _torch_estimators.EstimatorModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
