"""Keras 3 (TensorFlow backend) worker: keras.layers.LSTM stack + Dense(1), MSE, keras Adam.
The GRU cell: keras.layers.GRU(reset_after=True) (torch.nn.GRU's semantics; gates z, r, h,
two biases stacked as (2, 3H)).

Inference and the training step are each one ``tf.function`` (graph mode, the
fastest way to drive Keras 3 on TensorFlow); ``model.fit`` is used only by the
estimator-level benchmark.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np                  # noqa: E402
import tensorflow as tf             # noqa: E402
import keras                        # noqa: E402

from common import BETA1, BETA2, CELLS, EPS, LR   # noqa: E402

#: torch GRU blocks (r, z, n) -> Keras (z, r, h); the permutation is its own inverse.
_GRU_ORDER = (1, 0, 2)


def setup(n_threads):
    tf.config.threading.set_intra_op_parallelism_threads(n_threads)
    tf.config.threading.set_inter_op_parallelism_threads(n_threads)


def version():
    return f"keras {keras.__version__}, tensorflow {tf.__version__}"


def supports(cell):
    if cell.kind == "lstm" and not cell.is_plain_lstm:
        raise NotImplementedError(f"keras.layers.LSTM has no {cell.title}")


def _gru_gates(w, H):
    """torch (r, z, n) <-> Keras (z, r, h) along the last axis of a Keras array."""
    return np.concatenate([w[..., k * H:(k + 1) * H] for k in _GRU_ORDER], axis=-1)


def build_stack(cfg, return_last, cell=CELLS["lstm"]):
    """LSTM (or GRU) layers (sequences between layers); the last returns h_T if return_last."""
    inp = keras.Input(shape=(cfg.T, cfg.I), batch_size=cfg.B)
    x = inp
    layers = []
    for layer in range(cfg.L):
        last_layer = layer == cfg.L - 1
        kw = {"return_sequences": not (last_layer and return_last)}
        lstm = (keras.layers.GRU(cfg.H, reset_after=True, **kw) if cell.kind == "gru"
                else keras.layers.LSTM(cfg.H, **kw))
        x = lstm(x)
        layers.append(lstm)
    return inp, x, layers


def set_lstm_weights(layers, params, cell=CELLS["lstm"]):
    for k, lstm in enumerate(layers):
        kernel = params[f"weight_ih_l{k}"].T           # (I, 4H), gates i, f, c, o as torch
        recurrent = params[f"weight_hh_l{k}"].T        # (H, 4H)
        if cell.kind == "gru":
            H = recurrent.shape[0]
            bias = np.stack([params[f"bias_ih_l{k}"], params[f"bias_hh_l{k}"]])
            kernel, recurrent, bias = (_gru_gates(a, H) for a in (kernel, recurrent, bias))
        else:
            bias = params[f"bias_ih_l{k}"] + params[f"bias_hh_l{k}"]
        lstm.set_weights([kernel, recurrent, bias])


class Runner:
    def __init__(self, cfg, params, data, n_threads, cell=CELLS["lstm"]):
        self.cfg, self.cell = cfg, cell
        inp, seq, self.seq_layers = build_stack(cfg, return_last=False, cell=cell)
        self.seq_model = keras.Model(inp, seq)
        set_lstm_weights(self.seq_layers, params, cell)
        inp2, last, self.train_layers = build_stack(cfg, return_last=True, cell=cell)
        self.head = keras.layers.Dense(1)
        pred = self.head(last)
        self.train_model = keras.Model(inp2, pred)
        set_lstm_weights(self.train_layers, params, cell)
        self.head.set_weights([data["head_w"].T, data["head_b"]])
        self.X = tf.constant(data["X"])
        self.y = tf.constant(data["y"])
        self.opt = keras.optimizers.Adam(learning_rate=LR, beta_1=BETA1, beta_2=BETA2, epsilon=EPS)
        self.opt.build(self.train_model.trainable_variables)
        seq_model, train_model, opt = self.seq_model, self.train_model, self.opt

        @tf.function
        def infer(x):
            return seq_model(x, training=False)

        @tf.function
        def grads_fn(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(train_model(x, training=True) - y))
            return loss, tape.gradient(loss, train_model.trainable_variables)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(train_model(x, training=True) - y))
            grads = tape.gradient(loss, train_model.trainable_variables)
            opt.apply_gradients(zip(grads, train_model.trainable_variables))
            return loss

        self._infer, self._grads, self._step = infer, grads_fn, step

    def _to_torch_names(self, arrays):
        """[kernel, recurrent, bias]*L + [head kernel, head bias] -> torch-named dict."""
        out = {}
        for k in range(self.cfg.L):
            kernel, recurrent, bias = (np.asarray(a) for a in arrays[3 * k: 3 * k + 3])
            if self.cell.kind == "gru":                 # two biases, (2, 3H)
                kernel, recurrent, bias = (_gru_gates(a, self.cfg.H) for a in (kernel, recurrent, bias))
                out[f"bias_ih_l{k}"], out[f"bias_hh_l{k}"] = bias
            else:
                out[f"bias_ih_l{k}"] = bias             # Keras has one bias = b_ih + b_hh
                out[f"bias_hh_l{k}"] = bias
            out[f"weight_ih_l{k}"] = kernel.T
            out[f"weight_hh_l{k}"] = recurrent.T
        out["head_w"] = np.asarray(arrays[-2]).T
        out["head_b"] = np.asarray(arrays[-1])
        return out

    def params(self):
        p = self._to_torch_names([v.numpy() for v in self.train_model.trainable_variables])
        # one fused bias: its Adam update differs from two separate biases; not comparable
        for k in range(self.cfg.L if self.cell.kind == "lstm" else 0):
            del p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]
        return p

    def infer(self):
        return self._infer(self.X)

    def loss_and_grads(self):
        loss, grads = self._grads(self.X, self.y)
        return float(loss), self._to_torch_names([g.numpy() for g in grads])

    def train_step(self):
        return self._step(self.X, self.y)

    def as_numpy_out(self, out):
        return out.numpy()
