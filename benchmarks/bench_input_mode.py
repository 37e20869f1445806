"""Where a layer's input enters its gates: in each step's product, or hoisted.

An LSTM layer computes x_t @ W_ih^T either inside each step's product
([x_t | h_{t-1}] @ [W_ih | W_hh]^T, one small GEMM a step: "steps") or for
all T*B rows up front in one GEMM, each step then multiplying h_{t-1} by
W_hh alone ("hoisted"). ``clstm._rnn`` picks by the input width and the
batch (MIN_PACKED_INPUT_SIZE, STEPWISE_MIN_BATCH, HOISTED_ROW_*). This
script forces each mode in turn on the same shapes (fresh networks, the
module's thresholds patched) and times, in interleaved rounds,

* inference: ``run(X, keep_cache=False)``;
* a training step: forward, backward and a ``clstm.optimizers.Adam`` step
  (which repacks the weights: a network that holds both packs repacks both),

and prints the median time of each and hoisted / steps (below 1: hoisting
is faster)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 \\
        OPENBLAS_NUM_THREADS=1 python benchmarks/bench_input_mode.py --threads 1
"""

import argparse
import itertools
import statistics
import time

import numpy as np

import clstm
import clstm._rnn as rnn

MODES = {
    # (MIN_PACKED_INPUT_SIZE, STEPWISE_MIN_BATCH, HOISTED_ROW_INPUT_SIZE, HOISTED_ROW_MAX_BATCH)
    "steps": (1 << 30, 0, 1 << 30, 0),   # only [x | h] packed: every step's product
    "hoisted": (1, 1 << 30, 1, 1 << 30),  # both packs, no batch takes the inputs in its steps
}


_NAMES = ("MIN_PACKED_INPUT_SIZE", "STEPWISE_MIN_BATCH", "HOISTED_ROW_INPUT_SIZE",
          "HOISTED_ROW_MAX_BATCH")


def _settings():
    return tuple(getattr(rnn, name) for name in _NAMES)


def _set(values):
    for name, value in zip(_NAMES, values):
        setattr(rnn, name, value)


def _case(mode, B, T, I, H, threads):
    saved = _settings()
    _set(MODES[mode])
    net = clstm.LSTM(I, H, random_state=0, n_jobs=threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    grad = rng.standard_normal((B, T, H)).astype(np.float32) * 1e-3
    opt = clstm.optimizers.Adam(1e-4)

    def infer():
        net.run(X, keep_cache=False)

    def train():
        net.forward(X)
        net.backward(grad)
        opt.step(net)

    def run(fn, calls):
        current = _settings()
        _set(MODES[mode])
        try:
            fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls
        finally:
            _set(current)

    _set(saved)
    return {"inference": lambda calls: run(infer, calls),
            "training": lambda calls: run(train, calls)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--inputs", type=int, nargs="+", default=[1, 4, 16, 31])
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=0.02, help="per case per round")
    args = parser.parse_args()
    print(f"{args.threads} thread(s), T = {args.steps}, median of {args.rounds} rounds; "
          "hoisted / steps below 1: hoisting is faster\n")
    print("| B | I | H | inference steps us | hoisted / steps | training steps us "
          "| hoisted / steps |")
    print("|---|---|---|---|---|---|---|")
    for B, I, H in itertools.product(args.batches, args.inputs, args.hidden):
        cases = {mode: _case(mode, B, args.steps, I, H, args.threads) for mode in MODES}
        row = [str(B), str(I), str(H)]
        for task in ("inference", "training"):
            once = cases["steps"][task](1)
            calls = max(3, int(args.seconds / max(once, 1e-6)))
            times = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    times[mode].append(cases[mode][task](calls))
            med = {mode: statistics.median(v) for mode, v in times.items()}
            row += [f"{med['steps'] * 1e6:.1f}", f"{med['hoisted'] / med['steps']:.3f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
