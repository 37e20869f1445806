"""Shared by the tests of the one-call forward and backward
(test_forward_one_call.py, test_backward_one_call.py) and of bit-identical
results for every n_jobs (test_deterministic_threads.py): the cells they run,
and a fixture that splits tiny batches as large ones are split."""

import pytest

import clstm
import clstm._rnn as rnn

CELLS = {
    "lstm": (clstm.LSTM, {}),
    "peephole": (clstm.LSTM, {"peephole": True}),
    "cifg": (clstm.LSTM, {"coupled_gates": True}),
    "cifg-peephole": (clstm.LSTM, {"coupled_gates": True, "peephole": True}),
    "proj": (clstm.LSTM, {"proj_size": 3}),
    "layernorm": (clstm.LSTM, {"layer_norm": True}),
    "gru": (clstm.GRU, {}),
}


@pytest.fixture
def split_small_batches(monkeypatch):
    """Tiny test batches split into n_jobs sub-batches, as large ones do."""
    monkeypatch.setattr(rnn, "MIN_WORK_PER_C_THREAD", 0)
    monkeypatch.setattr(rnn, "MIN_ROWS_PER_THREAD", 1)
