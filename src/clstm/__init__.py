"""clstm: a compiled LSTM for Python.

Typed Cython kernels over BLAS (scipy.linalg.cython_blas) for the forward
pass and exact backpropagation through time, in float32 and float64, with
the parameter layout of torch.nn.LSTM.
"""

from clstm._version import __version__
from clstm._lstm import LSTM

__all__ = ["LSTM", "__version__"]
