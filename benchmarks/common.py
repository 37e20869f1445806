"""Shared definitions of the benchmark suite: configs, FLOP counts, case data.

Imported by the driver (``run.py``) and by every worker process. It imports
numpy only, so it never drags a framework into the driver.
"""

import os
from dataclasses import asdict, dataclass

import numpy as np

#: Frameworks the driver knows, in report order. ``onnxruntime`` is inference only.
FRAMEWORKS = ("clstm", "torch", "keras", "onnxruntime", "numpy")
PEERS = tuple(f for f in FRAMEWORKS if f != "clstm")
TASKS = ("inference", "training")
#: Which tasks each framework can run.
FRAMEWORK_TASKS = {
    "clstm": TASKS,
    "torch": TASKS,
    "keras": TASKS,
    "onnxruntime": ("inference",),
    "numpy": TASKS,
}

# Adam hyperparameters of the training step, the same for every framework.
LR = 1e-3
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8


@dataclass(frozen=True)
class Config:
    """One benchmark shape: batch B, steps T, inputs I, hidden H, layers L."""

    name: str
    B: int
    T: int
    I: int
    H: int
    L: int = 1

    def forward_flops(self):
        """GEMM FLOPs of the forward pass: 2*T*B*4H*(I_l + H) summed over layers."""
        total = 0
        for layer in range(self.L):
            n_in = self.I if layer == 0 else self.H
            total += 2 * self.T * self.B * 4 * self.H * (n_in + self.H)
        return total

    def training_flops(self):
        """About 3x the forward (forward, dh/dX GEMMs, weight-gradient GEMMs)."""
        return 3 * self.forward_flops()

    def flops(self, task):
        return self.forward_flops() if task == "inference" else self.training_flops()

    def as_dict(self):
        return asdict(self)


#: DESIGN.md section 4.
CONFIGS = {
    "ts-small": Config("ts-small", 32, 50, 1, 50),
    "ts-medium": Config("ts-medium", 64, 100, 8, 128),
    "nlp-large": Config("nlp-large", 64, 100, 256, 512),
    "stream": Config("stream", 1, 200, 16, 64),
    "stacked": Config("stacked", 32, 100, 16, 128, 2),
}


def parse_shape(text):
    """``B,T,I,H`` or ``B,T,I,H,L`` (optionally ``name=B,T,I,H[,L]``) -> Config."""
    name = None
    if "=" in text:
        name, text = text.split("=", 1)
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) not in (4, 5) or min(parts) < 1:
        raise ValueError(f"shape must be B,T,I,H[,L] with positive ints, got {text!r}")
    B, T, I, H = parts[:4]
    L = parts[4] if len(parts) == 5 else 1
    if name is None:
        name = f"custom-{B}x{T}x{I}x{H}" + (f"x{L}" if L > 1 else "")
    return Config(name, B, T, I, H, L)


def config_from_dict(d):
    return Config(**d)


def thread_env(n_threads):
    """Environment variables that pin every native thread pool to ``n_threads``."""
    n = str(n_threads)
    return {
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "BLIS_NUM_THREADS": n,
        "NUMEXPR_NUM_THREADS": n,
        "VECLIB_MAXIMUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",
    }


def apply_thread_env(n_threads):
    os.environ.update(thread_env(n_threads))


def make_case_data(cfg, seed=0):
    """Inputs, targets and Dense(1) head of one case (weights of the LSTM come from clstm)."""
    rng = np.random.default_rng(seed + 1000)
    X = rng.standard_normal((cfg.B, cfg.T, cfg.I)).astype(np.float32)
    y = rng.standard_normal((cfg.B, 1)).astype(np.float32)
    bound = 1.0 / np.sqrt(cfg.H)
    head_w = rng.uniform(-bound, bound, size=(1, cfg.H)).astype(np.float32)   # torch Linear layout
    head_b = rng.uniform(-bound, bound, size=(1,)).astype(np.float32)
    return {"X": X, "y": y, "head_w": head_w, "head_b": head_b}


def lstm_param_names(num_layers):
    names = []
    for layer in range(num_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            names.append(f"{kind}_l{layer}")
    return names


def load_case(path):
    """Read a case file written by the clstm worker: (params dict, data dict)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    data = {k: arrays[k] for k in ("X", "y", "head_w", "head_b")}
    return params, data


def random_params(cfg, seed=0):
    """torch-initialised LSTM weights drawn with NumPy (for probes that must not import clstm)."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.H)
    params = {}
    for layer in range(cfg.L):
        n_in = cfg.I if layer == 0 else cfg.H
        shapes = {"weight_ih": (4 * cfg.H, n_in), "weight_hh": (4 * cfg.H, cfg.H),
                  "bias_ih": (4 * cfg.H,), "bias_hh": (4 * cfg.H,)}
        for kind, shape in shapes.items():
            params[f"{kind}_l{layer}"] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return params
