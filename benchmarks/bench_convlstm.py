"""clstm.ConvLSTM against Keras 3's ConvLSTM2D (torch backend) at pinned thread counts.

    python benchmarks/bench_convlstm.py                     # 2 configs x {1, 2} threads, 5 rounds
    python benchmarks/bench_convlstm.py --rounds 3 --threads 1 --configs demo
    python benchmarks/bench_convlstm.py --write             # also (re)write the "## ConvLSTM"
                                                            # section of RESULTS.md

One worker process per (framework, thread count), started once with its
thread pools pinned (environment set before anything is imported); the
driver interleaves the rounds over the workers, so slow drifts of machine
load hit every framework alike. Work, float32, one ConvLSTM layer with
``return_sequences=True``:

- inference: the forward over the batch (Keras under ``torch.no_grad()``);
- training step: forward, loss = mean squared error of all output maps
  against a fixed target, backward through time, plain SGD on every weight
  (Keras: torch autograd through the Keras layer, the update in place).

Before timing, both frameworks run the same weights on the same input and
their outputs are compared (the max relative difference is reported).

``--profile`` adds where clstm's time goes (1 thread, CPU time of the calling
thread, so other load on the machine matters less): the im2col copies of the
forward (the input's, once, and h_{t-1}'s at every step) and the col2im of
the training step, against the whole call: is im2col + BLAS the right design
for these shapes, or would a direct convolution kernel pay?
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import thread_env, write_side_section  # noqa: E402

# name -> (batch, steps, height, width, channels, filters, kernel)
CONFIGS = {"demo": (16, 10, 32, 32, 1, 16, 3),      # the moving-shapes nowcasting demo's shape
           "shi": (4, 10, 64, 64, 1, 32, 5)}        # Shi et al.'s 64x64 maps, 5x5 kernels
FRAMEWORKS = ("clstm", "keras")
LR = 1e-3


# -- worker -----------------------------------------------------------------------------

def _data(cfg, seed=0):
    import numpy as np
    B, T, Hh, W, C, F, k = cfg
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, Hh, W, C)).astype(np.float32)
    target = rng.standard_normal((B, T, Hh, W, F)).astype(np.float32)
    weights = [rng.uniform(-0.3, 0.3, shape).astype(np.float32)
               for shape in ((k, k, C, 4 * F), (k, k, F, 4 * F), (4 * F,))]
    return X, target, weights


class ClstmRunner:
    def __init__(self, cfg, threads):
        import numpy as np

        import clstm
        self.np = np
        B, T, Hh, W, C, F, k = cfg
        self.X, self.target, weights = _data(cfg)
        self.net = clstm.ConvLSTM(C, F, k, n_jobs=threads)
        self.net.load_state_dict(dict(zip(("kernel_l0", "recurrent_kernel_l0", "bias_l0"),
                                          weights)))

    def inference(self):
        return self.net.run(self.X, keep_cache=False)[0]

    def training(self):
        out, _ = self.net.forward(self.X)
        grad = (2.0 / out.size) * (out - self.target)
        self.net.backward(grad)
        for name, value in self.net.params.items():
            value -= LR * self.net.grads[name]


class KerasRunner:
    def __init__(self, cfg, threads):
        os.environ["KERAS_BACKEND"] = "torch"
        import keras
        import torch
        torch.set_num_threads(threads)
        self.torch = torch
        B, T, Hh, W, C, F, k = cfg
        X, target, weights = _data(cfg)
        self.layer = keras.layers.ConvLSTM2D(F, k, padding="same", return_sequences=True)
        self.layer.build((None, None, Hh, W, C))
        self.layer.set_weights(weights)
        self.X, self.target = torch.from_numpy(X), torch.from_numpy(target)

    def inference(self):
        with self.torch.no_grad():
            return self.layer(self.X).numpy()

    def training(self):
        torch = self.torch
        out = self.layer(self.X)
        loss = torch.mean((out - self.target) ** 2)
        loss.backward()
        with torch.no_grad():
            for w in self.layer.trainable_weights:
                w.value.sub_(LR * w.value.grad)
                w.value.grad = None


def serve(framework, threads, config):
    """Answer one JSON command per line: {"task", "seconds"} -> per-call times."""
    runner = (ClstmRunner if framework == "clstm" else KerasRunner)(CONFIGS[config], threads)
    out = sys.stdout
    sys.stdout = sys.stderr               # frameworks' prints must not reach the driver
    if framework == "clstm":
        import clstm
        version = clstm.__version__
    else:
        import keras
        import torch
        version = f"keras {keras.__version__}, torch {torch.__version__}"
    first = runner.inference()
    import numpy as np
    np.save(os.path.join(os.environ["BENCH_TMP"], f"{framework}_{threads}_{config}.npy"), first)
    print(json.dumps({"ready": True, "version": version}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        fn = getattr(runner, cmd["task"])
        times, start = [], time.perf_counter()
        while not times or time.perf_counter() - start < cmd["seconds"]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}), file=out, flush=True)


# -- driver -------------------------------------------------------------------------------

def start_worker(framework, threads, config, tmp):
    env = dict(os.environ, **thread_env(threads))
    env.update(KERAS_BACKEND="torch", BENCH_TMP=tmp)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", framework,
                             str(threads), config], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    hello = json.loads(proc.stdout.readline())
    return proc, hello["version"]


def ask(proc, task, seconds):
    proc.stdin.write(json.dumps({"task": task, "seconds": seconds}) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())["times"]


def run(args):
    import tempfile

    import numpy as np
    results = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"), "rounds": args.rounds, "round_time": args.round_time,
        "python": platform.python_version(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "load_start": os.getloadavg(),
        "command": "python benchmarks/bench_convlstm.py " + " ".join(sys.argv[1:])},
        "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for threads in args.threads:
                workers = {fw: start_worker(fw, threads, config, tmp) for fw in FRAMEWORKS}
                outs = {fw: np.load(os.path.join(tmp, f"{fw}_{threads}_{config}.npy"))
                        for fw in FRAMEWORKS}
                diff = float(np.abs(outs["clstm"] - outs["keras"]).max()
                             / np.abs(outs["keras"]).max())
                times = {(fw, task): [] for fw in FRAMEWORKS for task in args.tasks}
                for _ in range(args.rounds):
                    for task in args.tasks:
                        for fw, (proc, _) in workers.items():
                            times[fw, task].extend(ask(proc, task, args.round_time))
                for proc, _ in workers.values():
                    proc.stdin.close()
                    proc.wait()
                for task in args.tasks:
                    row = {"config": config, "threads": threads, "task": task,
                           "max_rel_diff": diff}
                    for fw in FRAMEWORKS:
                        t = times[fw, task]
                        row[fw] = {"median_ms": 1e3 * statistics.median(t),
                                   "min_ms": 1e3 * min(t), "calls": len(t),
                                   "version": workers[fw][1]}
                    row["ratio"] = row["keras"]["median_ms"] / row["clstm"]["median_ms"]
                    results["runs"].append(row)
                    print(f"{config} {threads}t {task}: clstm {row['clstm']['median_ms']:.1f} ms, "
                          f"Keras {row['keras']['median_ms']:.1f} ms, ratio {row['ratio']:.2f}, "
                          f"outputs differ by {diff:.1e}", flush=True)
    results["meta"]["load_end"] = os.getloadavg()
    return results


def profile(configs):
    """Per config: clstm's forward and training step against its im2col / col2im."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import clstm
    from clstm import _scan

    def best(fn, n=5):
        times = []
        for _ in range(n):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return 1e3 * min(times)

    rows = []
    with threadpool_limits(1):
        for name in configs:
            B, T, Hh, W, C, F, k = CONFIGS[name]
            runner = ClstmRunner(CONFIGS[name], 1)
            forward, training = best(runner.inference), best(runner.training, 3)
            x = np.ascontiguousarray(runner.X.reshape(-1, C))
            h = np.random.default_rng(0).standard_normal((B * Hh * W, F)).astype(np.float32)
            cols_h = _scan.conv_columns(h, (Hh, W), (k, k))
            im2col = (best(lambda: _scan.conv_columns(x, (Hh, W), (k, k)))
                      + T * best(lambda: _scan.conv_columns(h, (Hh, W), (k, k))))
            col2im = T * best(lambda: _scan.conv_columns_adjoint(cols_h, (Hh, W), (k, k), F))
            flops = 2 * T * B * Hh * W * 4 * F * k * k * (C + F)
            rows.append({"config": name, "forward_ms": forward, "training_ms": training,
                         "im2col_ms": im2col, "col2im_ms": col2im,
                         "forward_gflops": flops / forward / 1e6})
            print(f"profile {name}: forward {forward:.0f} ms, im2col {im2col:.0f} ms, "
                  f"training {training:.0f} ms, col2im {col2im:.0f} ms", flush=True)
    return rows


def markdown(res):
    meta = res["meta"]
    lines = ["## ConvLSTM", "",
             "clstm.ConvLSTM against Keras 3's `ConvLSTM2D` on the torch backend, float32, one layer, "
             "`padding=\"same\"`, `return_sequences=True`. Inference: the forward; training step: "
             "forward + BPTT + SGD on every weight (MSE of all output maps; Keras through torch "
             "autograd). Ratio = Keras median / clstm median (above 1: clstm faster). Both run the "
             "same weights first; \"rel. diff\" is the largest difference of their outputs.", "",
             "Configs (B, T, height, width, C, filters, kernel): "
             + ", ".join(f"{k} = {v}" for k, v in CONFIGS.items()) + ".", "",
             "| config | threads | task | clstm ms median (min) | Keras ms median (min) | ratio | rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        c, k = r["clstm"], r["keras"]
        lines.append(f"| {r['config']} | {r['threads']} | {r['task']} | {c['median_ms']:.1f} "
                     f"({c['min_ms']:.1f}) | {k['median_ms']:.1f} ({k['min_ms']:.1f}) | "
                     f"{r['ratio']:.2f} | {r['max_rel_diff']:.1e} |")
    if max(meta["load_start"][0], meta["load_end"][0]) > 0.5 * meta["cpus"]:
        lines += ["", f"**Preliminary**: the machine was shared (load average up to "
                  f"{max(meta['load_start'][0], meta['load_end'][0]):.1f} on {meta['cpus']} CPUs). "
                  "Under such load the 2-thread timings mostly measure contention, the spinning "
                  "OpenMP pool of torch (under Keras) worst of all; compare the minima, and rerun "
                  "on a quiet machine for final numbers."]
    if res.get("profile"):
        lines += ["", "Where clstm's time goes (1 thread, CPU time of the calling thread, best of "
                  "several calls; `--profile`): im2col = the input's columns once plus h_{t-1}'s "
                  "at every step; col2im = the scatter-add of h_{t-1}'s column gradients at every "
                  "step of the training step.", "",
                  "| config | forward ms | of which im2col | GFLOP/s (conv FLOPs) | training step ms "
                  "| of which col2im |", "|---|---|---|---|---|---|"]
        for p in res["profile"]:
            lines.append(f"| {p['config']} | {p['forward_ms']:.0f} | {p['im2col_ms']:.0f} "
                         f"({p['im2col_ms'] / p['forward_ms']:.0%}) | {p['forward_gflops']:.0f} | "
                         f"{p['training_ms']:.0f} | {p['col2im_ms']:.0f} "
                         f"({p['col2im_ms'] / p['training_ms']:.0%}) |")
    versions = {fw: res["runs"][0][fw]["version"] for fw in FRAMEWORKS} if res["runs"] else {}
    lines += ["", f"{meta['date']}; {meta['cpus']} CPUs; Python {meta['python']}; "
              f"clstm {versions.get('clstm')}, {versions.get('keras')}; {meta['rounds']} "
              f"interleaved rounds of ~{meta['round_time']} s per framework and task; load "
              f"average at start {tuple(round(x, 2) for x in meta['load_start'])}, at end "
              f"{tuple(round(x, 2) for x in meta['load_end'])}.", "",
              "Command:", "", "```", meta["command"], "```", ""]
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--tasks", nargs="+", default=["inference", "training"],
                   choices=["inference", "training"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-time", type=float, default=1.0,
                   help="seconds of calls per framework, task and round")
    p.add_argument("--profile", action="store_true",
                   help="also measure clstm's im2col / col2im share (1 thread)")
    p.add_argument("--render", action="store_true",
                   help="only re-render the ## ConvLSTM section from convlstm_results.json")
    p.add_argument("--write", action="store_true",
                   help="write convlstm_results.json and the ## ConvLSTM section of RESULTS.md")
    args = p.parse_args()
    results_path = os.path.join(HERE, "convlstm_results.json")
    if args.render:
        with open(results_path) as f:
            write_side_section("convlstm", markdown(json.load(f)))
        return
    res = run(args)
    if args.profile:
        res["profile"] = profile(args.configs)
    text = markdown(res)
    print(text)
    if args.write:
        with open(results_path, "w") as f:
            json.dump(res, f, indent=1)
        write_side_section("convlstm", text)


if __name__ == "__main__":
    main()
