"""Shared definitions of the benchmark suite: configs, FLOP counts, case data.

Imported by the driver (``run.py``) and by every worker process. It imports
numpy only, so it never drags a framework into the driver.
"""

import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

#: Frameworks the driver knows, in report order. ``onnxruntime`` is inference only.
FRAMEWORKS = ("clstm", "torch", "keras", "onnxruntime", "numpy")
PEERS = tuple(f for f in FRAMEWORKS if f != "clstm")
#: Not a peer: clstm's plain LSTM on the same shape, timed beside an LSTM variant
#: (``Cell.baseline``) to measure the variant's overhead; never checked, never a "best peer".
BASELINE = "clstm_lstm"
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

    def forward_flops(self, cell=None):
        """GEMM FLOPs of the forward pass: 2*T*B*4H*(I_l + H) summed over layers (LSTM);
        for another cell 2*T*B*(G*(I_l + P) + P*H), see ``Cell.layer_gemms``."""
        cell = cell or CELLS["lstm"]
        return sum(2 * self.T * self.B * sum(m * n for m, n in cell.layer_gemms(self, layer))
                   for layer in range(self.L))

    def training_flops(self, cell=None):
        """About 3x the forward (forward, dh/dX GEMMs, weight-gradient GEMMs)."""
        return 3 * self.forward_flops(cell)

    def flops(self, task, cell=None):
        return self.forward_flops(cell) if task == "inference" else self.training_flops(cell)

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


@dataclass(frozen=True)
class Cell:
    """A recurrent cell of the benchmark (``--cell``): which network, which peers implement it.

    The LSTM options are those of ``clstm.LSTM`` (README, "The cell family"); ``proj``
    means ``proj_size = H // 2``. ``frameworks``: the peers that compute the same thing
    (checked against clstm, timed, ratios); ``baseline``: also time clstm's plain LSTM on the
    same shape (``BASELINE``) and report the variant's overhead over it, goal ``overhead_goal``.
    """

    name: str
    title: str
    kind: str = "lstm"                 # "lstm" | "gru"
    peephole: bool = False
    coupled_gates: bool = False
    proj: bool = False
    layer_norm: bool = False
    frameworks: tuple = FRAMEWORKS
    baseline: bool = False
    overhead_goal: float = None        # max variant time / plain LSTM time
    lstm_targets: bool = True          # DESIGN.md section 4's LSTM ratio targets apply

    @property
    def is_plain_lstm(self):
        return self.name == "lstm"

    def gates(self, H):
        """Gate rows of W_ih / W_hh: 3H for a GRU or coupled gates, else 4H."""
        return 3 * H if (self.kind == "gru" or self.coupled_gates) else 4 * H

    def out_size(self, H):
        """Units of h (the output): proj_size = H // 2 with projection, else H."""
        return max(1, H // 2) if self.proj else H

    def clstm_kwargs(self, H):
        """Keyword arguments of clstm.LSTM beyond the plain LSTM's (none for lstm and gru)."""
        kw = {k: True for k in ("peephole", "coupled_gates", "layer_norm") if getattr(self, k)}
        if self.proj:
            kw["proj_size"] = self.out_size(H)
        return kw

    def layer_gemms(self, cfg, layer):
        """(rows, depth) of the GEMMs of one step of one layer, per sequence."""
        G, P = self.gates(cfg.H), self.out_size(cfg.H)
        n_in = cfg.I if layer == 0 else P
        gemms = [(G, n_in), (G, P)]
        if self.proj:
            gemms.append((P, cfg.H))
        return gemms

    def param_shapes(self, cfg):
        """torch/clstm parameter names and shapes, in state_dict order."""
        G, P, H = self.gates(cfg.H), self.out_size(cfg.H), cfg.H
        shapes = {}
        for k in range(cfg.L):
            n_in = cfg.I if k == 0 else P
            shapes.update({f"weight_ih_l{k}": (G, n_in), f"weight_hh_l{k}": (G, P),
                           f"bias_ih_l{k}": (G,), f"bias_hh_l{k}": (G,)})
            if self.proj:
                shapes[f"weight_hr_l{k}"] = (P, H)
            if self.peephole:
                shapes[f"weight_peephole_l{k}"] = ((2 if self.coupled_gates else 3) * H,)
            if self.layer_norm:
                shapes.update({f"weight_ln_ih_l{k}": (G,), f"weight_ln_hh_l{k}": (G,),
                               f"weight_ln_c_l{k}": (H,), f"bias_ln_c_l{k}": (H,)})
        return shapes


_VARIANT_PEERS = ("clstm", "onnxruntime", "numpy")
#: ``--cell`` choices, in report order.
CELLS = {c.name: c for c in (
    Cell("lstm", "LSTM"),
    Cell("gru", "GRU", kind="gru"),
    Cell("peephole", "LSTM with peepholes", peephole=True, frameworks=_VARIANT_PEERS, baseline=True,
         overhead_goal=1.10, lstm_targets=False),
    Cell("cifg", "CIFG LSTM (coupled input-forget gates)", coupled_gates=True, frameworks=_VARIANT_PEERS,
         baseline=True, overhead_goal=1.10, lstm_targets=False),
    Cell("cifg-peephole", "CIFG LSTM with peepholes", peephole=True, coupled_gates=True,
         frameworks=_VARIANT_PEERS, baseline=True, overhead_goal=1.10, lstm_targets=False),
    Cell("proj", "LSTM with projection (proj_size = H/2)", proj=True, frameworks=("clstm", "torch"),
         baseline=True, overhead_goal=1.10, lstm_targets=False),
    Cell("layernorm", "layer-normalised LSTM", layer_norm=True, frameworks=("clstm",),
         baseline=True, overhead_goal=1.10, lstm_targets=False),
)}


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


def make_case_data(cfg, seed=0, out_size=None):
    """Inputs, targets and Dense(1) head of one case (weights of the LSTM come from clstm).

    ``out_size``: units of the network's output (the head's input), H unless projected."""
    rng = np.random.default_rng(seed + 1000)
    X = rng.standard_normal((cfg.B, cfg.T, cfg.I)).astype(np.float32)
    y = rng.standard_normal((cfg.B, 1)).astype(np.float32)
    out_size = out_size or cfg.H
    bound = 1.0 / np.sqrt(out_size)
    head_w = rng.uniform(-bound, bound, size=(1, out_size)).astype(np.float32)   # torch Linear layout
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


def random_params(cfg, seed=0, cell=None):
    """torch-initialised weights drawn with NumPy (for probes that must not import clstm, and
    the cases of a cell when clstm is not in the run); layer-norm gains 1, biases 0."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.H)
    params = {}
    for name, shape in (cell or CELLS["lstm"]).param_shapes(cfg).items():
        if name.startswith(("weight_ln", "bias_ln")):
            params[name] = np.full(shape, 1.0 if name.startswith("weight") else 0.0, np.float32)
        else:
            params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return params


# -- side sections of RESULTS.md -------------------------------------------------
# Benchmarks other than run.py (ConvLSTM, Dask, text, the streaming step, ...) keep their
# section of RESULTS.md in sections/<name>.md; report.write_markdown appends them all on
# every re-render, so a full run.py never drops them.
SECTIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sections")
#: the order of the side sections in RESULTS.md (others follow, by file name)
SECTION_ORDER = ("fit", "step", "convlstm", "text", "dask")


def side_sections():
    """The side sections' texts, in SECTION_ORDER, then the rest by name."""
    if not os.path.isdir(SECTIONS_DIR):
        return []
    names = sorted(f[:-3] for f in os.listdir(SECTIONS_DIR) if f.endswith(".md"))
    names.sort(key=lambda n: SECTION_ORDER.index(n) if n in SECTION_ORDER else len(SECTION_ORDER))
    texts = []
    for name in names:
        with open(os.path.join(SECTIONS_DIR, name + ".md")) as f:
            texts.append(f.read().rstrip("\n"))
    return texts


def write_side_section(name, text, results_md=None):
    """Save a benchmark's section as sections/<name>.md and re-render RESULTS.md's side
    sections (the text should start with its '## Title' line)."""
    os.makedirs(SECTIONS_DIR, exist_ok=True)
    path = os.path.join(SECTIONS_DIR, name + ".md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    os.replace(tmp, path)
    import report
    report.refresh_side_sections(results_md or os.path.join(os.path.dirname(SECTIONS_DIR), "RESULTS.md"))


def c_compiler():
    """The C compiler at hand ($CC, else gcc, else cc), or None."""
    return (shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")
            or shutil.which("cc"))


def compile_c_program(source, directory, flags=(), timeout=600):
    """Compile the C program `source` (with `flags`, e.g. -O3, -I dirs, -lm) into
    `directory`; the executable's path. Raises OSError without a C compiler and
    subprocess.CalledProcessError / TimeoutExpired if the build fails."""
    cc = c_compiler()
    if cc is None:
        raise OSError("no C compiler (set CC, or install gcc)")
    src, exe = os.path.join(directory, "program.c"), os.path.join(directory, "program")
    with open(src, "w") as f:
        f.write(source)
    # (flags after the source: libraries such as -lm must follow it)
    subprocess.run([cc, src, "-o", exe, *flags], check=True, capture_output=True,
                   timeout=timeout)
    return exe


def run_c_program(source, args=(), flags=(), timeout=600):
    """Compile the C program `source` (compile_c_program) and run it with `args`;
    its stdout (subprocess.CalledProcessError / TimeoutExpired if the run fails).
    For the measurements a Python loop cannot make (batch1_floor.py's kernels,
    run.py's clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c_program(source, tmp, flags, timeout)
        return subprocess.run([exe, *map(str, args)], check=True, capture_output=True,
                              text=True, timeout=timeout).stdout
