"""Where LSTMRegressor.fit spends its time per mini-batch: a py-spy profile of the
forecast fit (workers/fit_bench.py), split into the kernels, the network's Python
around them, the model (head, loss, row selection), the optimizer, the gradient norm
and the rest of the training loop.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_fit.py [--src SRC]

needs py-spy (``pip install py-spy``); ``--src`` profiles another clstm source tree
(e.g. an older checkout) for a before/after breakdown. Prints the share of each part
and, from the fits' CPU time per mini-batch, its microseconds per mini-batch.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import sys, time, warnings
sys.path.insert(0, {workers!r})
import fit_bench
from threadpoolctl import threadpool_limits
threadpool_limits(1)
warnings.filterwarnings("ignore")
fit_bench.use_case({case!r})
X, y = fit_bench.make_data()
fit_bench._fit_clstm(X, y, 1, 0)              # warm-up: imports, first packing
c0 = time.process_time()
for r in range({reps}):
    fit_bench._fit_clstm(X, y, 1, r)
n = {reps} * fit_bench.EPOCHS * -(-fit_bench.N // fit_bench.BATCH)
print("CPU_US_PER_BATCH", 1e6 * (time.process_time() - c0) / n)
"""

# (part, test on a sample's frames), first match wins; frames are "func (file:line)"
PARTS = [
    ("kernels (_scan.forward / _scan.backward)",
     lambda fs, k: fs[-1] in k),
    ("network Python around the kernels (run / backward_state)",
     lambda fs, k: any(f.startswith(("RecurrentNetwork.run ", "RecurrentNetwork.backward_state "))
                       for f in fs)),
    ("optimizer step", lambda fs, k: any(".update_params " in f for f in fs)),
    ("gradient norm and clipping", lambda fs, k: any(f.startswith("_global_norm ") for f in fs)),
    ("model: head, loss, row selection, gradient buffers",
     lambda fs, k: any(f.startswith("SequenceModel.loss_and_grad ") for f in fs)),
    ("training loop: batching, checks, BLAS limit, progress",
     lambda fs, k: any("._run_epoch " in f for f in fs)),
    ("per epoch: snapshot, bookkeeping", lambda fs, k: True),
]


def kernel_frames(src):
    """The frames (as py-spy names them) of the lines that call the scan kernels."""
    path = os.path.join(src, "clstm", "_rnn.py")
    frames = set()
    with open(path) as fh:
        func = None
        for i, line in enumerate(fh, 1):
            stripped = line.strip()
            if stripped.startswith("def "):
                func = stripped[4:].split("(")[0]
            # the per-layer scans and the compiled whole-network forward (NetworkPlan)
            if any(call in line for call in ("_scan.forward(", "_scan.backward(", "plan.run(")):
                frames.add(f"RecurrentNetwork.{func} (clstm/_rnn.py:{i})")
    return frames


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=os.path.join(os.path.dirname(HERE), "src"))
    p.add_argument("--case", default="forecast")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=int, default=1000)
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.src), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    code = CHILD.format(workers=os.path.join(HERE, "workers"), case=args.case, reps=args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "profile.txt")
        # --nonblocking: a blocking py-spy stops the process for every sample,
        # which inflates the many short Python frames against the long kernel
        # calls (the forecast fit's kernels read 24 % of the samples blocking,
        # 55 % not, against 56 % of a training step's time timed apart)
        proc = subprocess.run(["py-spy", "record", "--nonblocking", "-r", str(args.rate), "-f",
                               "raw", "-o", raw, "--", sys.executable, "-c", code],
                              capture_output=True, text=True, env=env)
        cpu_us = next(float(line.split()[1]) for line in proc.stdout.splitlines()
                      if line.startswith("CPU_US_PER_BATCH"))
        kernels = kernel_frames(args.src)
        counts = collections.Counter()
        with open(raw) as fh:
            for line in fh:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                if not stack or not n.isdigit():
                    continue          # (a sample py-spy could not name: no count)
                frames = stack.split(";")
                if not any("._run_epoch " in f for f in frames) and not any(
                        "._fit " in f for f in frames):
                    continue          # imports, the warm-up's data, the child's own lines
                part = next(name for name, test in PARTS if test(frames, kernels))
                counts[part] += int(n)
    total = sum(counts.values())
    print(f"{args.src}: {args.case}, CPU {cpu_us:.0f} us per mini-batch (fit / batches)")
    print("| part | share | us per mini-batch |\n|---|---|---|")
    for name, _ in PARTS:
        share = counts[name] / total
        print(f"| {name} | {100 * share:.1f}% | {share * cpu_us:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
