"""Quick smoke test of an installed clstm: run from outside the source tree.

Checks that the package imported is the installed one, that the compiled
network matches the NumPy reference forward and backward (float64, two
bidirectional layers, ragged lengths), that float32 agrees with float64, and
that the package data shipped.
"""

import sys
import sysconfig
from pathlib import Path

import numpy as np

import clstm
from clstm import _cell
from clstm._reference import reference_lstm_backward, reference_lstm_forward
from clstm.datasets import load_elnino

site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
where = Path(clstm.__file__).resolve()
assert any(s in where.parents for s in site) and "site-packages" in where.parts, (
    f"clstm imported from {where}, not from site-packages {sorted(map(str, site))}")
print(f"clstm {clstm.__version__} from {where.parent}; dispatch: {_cell.dispatch_level()}")

rng = np.random.default_rng(0)
B, T, I, H, L = 4, 6, 3, 5, 2
X = rng.standard_normal((B, T, I))
lengths = np.array([6, 4, 6, 1])
net = clstm.LSTM(I, H, num_layers=L, bidirectional=True, dtype="float64", random_state=0)
out, (h_n, c_n) = net(X, lengths=lengths)
ref_out, (ref_h, ref_c), cache = reference_lstm_forward(
    net.state_dict(), X, lengths=lengths, num_layers=L, bidirectional=True)
np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(h_n, ref_h, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(c_n, ref_c, rtol=1e-10, atol=1e-12)

G, gh, gc = (rng.standard_normal(a.shape) for a in (out, h_n, c_n))
for t in range(T):  # the output past a sequence's length is zero: no gradient there
    G[lengths <= t, t] = 0.0
net.backward(G, gh, gc)
_, ref_grads = reference_lstm_backward(G, gh, gc, cache)
for name, grad in net.grads.items():
    np.testing.assert_allclose(grad, ref_grads[name], rtol=1e-8, atol=1e-10, err_msg=name)

net32 = clstm.LSTM(I, H, num_layers=L, bidirectional=True, dtype="float32", random_state=0)
net32.load_state_dict(net.state_dict())
out32, _ = net32(X, lengths=lengths)
assert out32.dtype == np.float32
np.testing.assert_allclose(out32, out, atol=1e-5)

assert load_elnino().data.shape == (732,)
print("smoke: OK")
sys.exit(0)
