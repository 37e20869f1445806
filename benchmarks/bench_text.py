#!/usr/bin/env python
"""Text benchmark: embedding + LSTM + softmax over the vocabulary, one training step.

The model of issue 13: token ids -> Embedding(10000, 128) -> LSTM(256) ->
Linear(256, 10000) at every step -> softmax cross-entropy against the next
tokens; batch 32 sequences of 50 steps; Adam. The same model in clstm
(``SequenceModel`` with its embedding input layer, the step the estimators
take: ``loss_and_grad`` + ``AdamOptimizer.update_params``) and in PyTorch
(``nn.Embedding(sparse=True)`` + ``nn.LSTM`` + ``nn.Linear``,
``CrossEntropyLoss``, ``SparseAdam`` on the embedding and ``Adam`` on the
rest). Both update the embedding lazily (only the rows of the batch's tokens,
with their own moments): the same optimizer semantics. No gradient clipping,
no L2 penalty, float32.

Each framework runs in its own process, pinned to the thread count (thread
pool environment variables, ``threadpoolctl``, ``torch.set_num_threads``),
with ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` unset for the benchmark as
DESIGN.md asks; rounds alternate between the frameworks, and each round
times ``--steps`` training steps one by one. Reported: the median step time
(ms) over all timed steps, and the ratio torch / clstm (above 1 = clstm
faster).

    python benchmarks/bench_text.py                      # 1 and 2 threads, 5 rounds of 50 steps
    python benchmarks/bench_text.py --rounds 1 --steps 5 # a quick check
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FRAMEWORKS = ("clstm", "torch")


def _thread_env(n):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(n)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# ----------------------------------------------------------------------
# workers (one process per framework and thread count)
# ----------------------------------------------------------------------
def _data(args):
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, size=(args.batch, args.seq + 1), dtype=np.int64)
    return ids[:, :-1].copy(), ids[:, 1:].copy()


def _clstm_step(args):
    import numpy as np
    from threadpoolctl import threadpool_limits

    from clstm._model import SequenceModel
    from clstm._optimizers import AdamOptimizer
    from clstm._tokens import Embedding

    threadpool_limits(args.threads)
    rng = np.random.RandomState(0)
    layer = Embedding.create(args.vocab, args.embed, np.float32, rng)
    model = SequenceModel.create(args.embed, {"hidden_size": args.hidden, "dtype": "float32",
                                              "n_jobs": args.threads},
                                 args.vocab, "softmax", True, rng, input_layer=layer)
    model.train()
    opt = AdamOptimizer(1e-3)
    X, Y = _data(args)
    lengths = np.full(args.batch, args.seq, dtype=np.int64)
    W = np.ones((args.batch, args.seq))

    def step():
        _, grads = model.loss_and_grad(X, lengths, Y, W)
        opt.update_params(model.params, grads)
    return step


def _torch_step(args):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    emb = nn.Embedding(args.vocab, args.embed, sparse=True)
    lstm = nn.LSTM(args.embed, args.hidden, batch_first=True)
    head = nn.Linear(args.hidden, args.vocab)
    sparse_opt = torch.optim.SparseAdam(list(emb.parameters()), lr=1e-3)
    dense_opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    X, Y = (torch.from_numpy(a) for a in _data(args))

    def step():
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        out, _ = lstm(emb(X))
        loss = loss_fn(head(out).reshape(-1, args.vocab), Y.reshape(-1))
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
    return step


def _worker(args):
    make = {"clstm": _clstm_step, "torch": _torch_step}[args.worker]
    step = make(args)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    info = {}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = sorted({f"{p.get('internal_api')} {p.get('version')} "
                               f"{p.get('architecture')} threads={p.get('num_threads')}"
                               for p in threadpool_info() if p.get("user_api") == "blas"})
    except ImportError:
        pass
    if args.worker == "torch":
        import torch
        info["version"] = torch.__version__
    else:
        import clstm
        info["version"] = clstm.__version__
    print(json.dumps({"times": times, **info}))


# ----------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------
def _run_worker(framework, threads, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework,
           "--threads", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--vocab", str(args.vocab), "--embed", str(args.embed), "--hidden", str(args.hidden),
           "--batch", str(args.batch), "--seq", str(args.seq)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_thread_env(threads))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=50, help="timesteps per sequence")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0]
        return _worker(args)

    import numpy as np
    print(f"text benchmark: Embedding({args.vocab}, {args.embed}) + LSTM({args.hidden}) + "
          f"softmax({args.vocab}); batch {args.batch} x {args.seq} steps; Adam (lazy rows on "
          "the embedding); float32")
    print(f"CPU: {_cpu_name()} ({os.cpu_count()} CPUs); load average {os.getloadavg()}")
    print(f"rounds {args.rounds} x {args.steps} timed steps (+{args.warmup} warm-up) per "
          "framework and thread count, frameworks alternating")
    rows = []
    for threads in args.threads:
        times = {f: [] for f in FRAMEWORKS}
        notes = {}
        for r in range(args.rounds):
            order = FRAMEWORKS if r % 2 == 0 else FRAMEWORKS[::-1]
            for fw in order:
                res = _run_worker(fw, threads, args)
                if "error" in res:
                    notes[fw] = res["error"]
                    continue
                times[fw].extend(res["times"])
                notes.setdefault(fw, f"{res.get('version')} {'; '.join(res.get('blas', []))}")
        med = {f: 1e3 * float(np.median(t)) if t else float("nan") for f, t in times.items()}
        rows.append((threads, med, notes))
    print()
    print("| threads | clstm ms | PyTorch ms | ratio (torch / clstm) |")
    print("|---|---|---|---|")
    for threads, med, _ in rows:
        print(f"| {threads} | {med['clstm']:.1f} | {med['torch']:.1f} | "
              f"{med['torch'] / med['clstm']:.2f} |")
    print()
    for threads, _, notes in rows:
        for fw, note in notes.items():
            print(f"- {threads} thread(s), {fw}: {note}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
