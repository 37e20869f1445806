"""One benchmark worker process: one framework, one thread count.

Usage (the driver starts these; by hand only for debugging):

    python benchmarks/workers/worker.py --framework torch --threads 2 serve
    python benchmarks/workers/worker.py --framework torch --threads 2 --cell gru serve
    python benchmarks/workers/worker.py --framework torch --threads 1 rss --config nlp-large
    python benchmarks/workers/worker.py --threads 1 sgemm --configs '<json list>'
    python benchmarks/workers/worker.py --framework torch --threads 1 fit --case forecast

``serve`` reads one JSON command per line on stdin and answers one JSON line on
the original stdout; everything the frameworks print goes to stderr.
Thread env vars are set before any framework is imported.
"""

import argparse
import gc
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))


def _early_args():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", default="clstm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cell", default="lstm", help="the recurrent cell (common.CELLS)")
    p.add_argument("mode", choices=["serve", "rss", "sgemm", "fit"])
    p.add_argument("--config", default="nlp-large")
    p.add_argument("--configs", default="[]")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--case", default="ts-small", help="fit: the case (fit_bench.CASES)")
    p.add_argument("--reps", type=int, default=None, help="fit: repetitions in the process")
    return p.parse_args()


ARGS = _early_args()
from common import apply_thread_env  # noqa: E402

apply_thread_env(ARGS.threads)

import numpy as np  # noqa: E402

from common import (CELLS, CONFIGS, config_from_dict, load_case, make_case_data,  # noqa: E402
                    random_params)

CELL = CELLS[ARGS.cell]


def import_framework(name):
    """Import the adapter module (and so the framework); return (module, seconds)."""
    t0 = time.perf_counter()
    mod = __import__(f"fw_{name}")
    seconds = time.perf_counter() - t0
    mod.setup(ARGS.threads)
    return mod, seconds


def to_numpy(runner, out):
    if hasattr(runner, "as_numpy_out"):
        return np.asarray(runner.as_numpy_out(out))
    if hasattr(out, "detach"):
        return out.detach().numpy()
    return np.asarray(out)


# -- serve -----------------------------------------------------------------
class Server:
    def __init__(self, mod):
        self.mod = mod
        self.runners = {}      # (config, case file) -> Runner, from check to timing

    def _runner(self, cfg, case_path):
        key = (cfg, case_path)
        if key not in self.runners:
            params, data = load_case(case_path)
            self.runners[key] = self.mod.Runner(cfg, params, data, ARGS.threads, cell=CELL)
        self.runner = self.runners[key]
        return self.runner

    def cmd_export(self, msg):
        """Draw the weights and write the case file: clstm's own initialisation
        (``draw_params``) in the clstm worker, torch's drawn with NumPy in the others
        (the reference of a cell run without clstm)."""
        cfg = config_from_dict(msg["config"])
        draw = getattr(self.mod, "draw_params", random_params)
        arrays = {f"param/{k}": np.asarray(v) for k, v in draw(cfg, msg["seed"], CELL).items()}
        arrays.update(make_case_data(cfg, msg["seed"], CELL.out_size(cfg.H)))
        np.savez(msg["path"], **arrays)
        return {}

    def cmd_check(self, msg):
        """Outputs, loss, gradients and post-Adam-step parameters from the case's weights.

        The runner is kept for the timing of that config (it then starts one Adam
        step in, which changes nothing in the work timed); Keras' traced functions
        are so reused instead of traced again.
        """
        cfg = config_from_dict(msg["config"])
        params, data = load_case(msg["case_path"])
        runner = self.mod.Runner(cfg, params, data, ARGS.threads, cell=CELL)
        res = {}
        if "inference" in msg["tasks"]:
            res["out"] = to_numpy(runner, runner.infer())
        if "training" in msg["tasks"]:
            loss, grads = runner.loss_and_grads()
            res["loss"] = np.float64(loss)
            res.update({f"grad/{k}": np.asarray(v) for k, v in grads.items()})
            runner.train_step()
            res.update({f"post/{k}": np.array(v) for k, v in runner.params().items()})
        np.savez(msg["out_path"], **res)
        self.runners[(cfg, msg["case_path"])] = runner
        return {}

    def cmd_prepare(self, msg):
        """Build (or reuse) the runner and warm the task up; return a per-call estimate."""
        cfg = config_from_dict(msg["config"])
        runner = self._runner(cfg, msg["case_path"])
        fn = runner.infer if msg["task"] == "inference" else runner.train_step
        times = []
        t_start = time.perf_counter()
        while len(times) < msg.get("min_calls", 3) or time.perf_counter() - t_start < msg["warmup_s"]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= msg.get("max_calls", 10_000):
                break
        tail = sorted(times[len(times) // 2:])
        return {"estimate_ms": 1e3 * tail[len(tail) // 2], "warmup_calls": len(times),
                "first_call_ms": 1e3 * times[0]}

    def cmd_bench(self, msg):
        runner = self.runner
        fn = runner.infer if msg["task"] == "inference" else runner.train_step
        times = []
        perf = time.perf_counter
        for _ in range(msg["reps"]):
            t0 = perf()
            fn()
            times.append(perf() - t0)
        return {"times_ms": [1e3 * t for t in times]}

    def cmd_release(self, msg):
        """Drop the runners of one config (or all)."""
        name = msg.get("config")
        for key in [k for k in self.runners if name is None or k[0].name == name]:
            del self.runners[key]
        self.runner = None
        gc.collect()
        return {}


def serve():
    # The protocol uses a private copy of stdout; fd 1 goes to stderr so that
    # anything a framework prints cannot corrupt it.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        mod, import_s = import_framework(ARGS.framework)
        mod.supports(CELL)
        hello = {"ok": True, "framework": ARGS.framework, "version": mod.version(),
                 "import_s": import_s, "threads": ARGS.threads, "pid": os.getpid()}
    except Exception as exc:   # a missing peer (or cell): the driver skips it with this note
        proto.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                "missing": isinstance(exc, ImportError)}) + "\n")
        return
    proto.write(json.dumps(hello) + "\n")
    server = Server(mod)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        try:
            reply = getattr(server, "cmd_" + msg["cmd"])(msg)
            reply["ok"] = True
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


# -- probes (each in a fresh process) ----------------------------------------
def _maxrss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _vm_hwm_mib():
    """Peak RSS of this process' own address space (/proc; a cross-check of ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def probe_rss():
    base = _maxrss_mib()
    mod, _ = import_framework(ARGS.framework)
    after_import = _maxrss_mib()
    cfg = CONFIGS[ARGS.config]
    runner = mod.Runner(cfg, random_params(cfg), make_case_data(cfg), ARGS.threads)
    for _ in range(ARGS.steps):
        runner.train_step()
    return {"peak_rss_mib": _maxrss_mib(), "vm_hwm_mib": _vm_hwm_mib(), "after_import_mib": after_import,
            "interpreter_mib": base, "config": cfg.name, "steps": ARGS.steps}


def probe_sgemm():
    """sgemm GFLOP/s on 2048^3 and the GEMM-shape bound of each config's forward."""
    from scipy.linalg.blas import sgemm, sgemv
    from threadpoolctl import threadpool_limits
    threadpool_limits(ARGS.threads)
    rng = np.random.default_rng(0)
    n = 2048
    a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    c = np.zeros((n, n), dtype=np.float32, order="F")
    reps = 3 if ARGS.quick else 7
    sgemm(1.0, a, b, c=c, overwrite_c=1)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sgemm(1.0, a, b, c=c, overwrite_c=1)
        ts.append(time.perf_counter() - t0)
    gflops = 2 * n ** 3 / np.median(ts) / 1e9
    gflops_best = 2 * n ** 3 / np.min(ts) / 1e9
    libraries = {"scipy": {"gflops": gflops, "gflops_best": gflops_best}}
    libraries.update(_other_gemms(a, b, reps))

    def per_call(fn, budget=0.15 if ARGS.quick else 0.4):
        fn()
        k = 1
        while True:                       # grow the block until it takes >= 20 ms
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            dt = time.perf_counter() - t0
            if dt > 0.02:
                break
            k *= 2
        blocks = max(3, int(budget / dt))
        best = []
        for _ in range(blocks):
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            best.append((time.perf_counter() - t0) / k)
        return float(np.min(best))     # a bound: the least-disturbed block

    # Python + f2py overhead of one call, subtracted from the per-step GEMMs
    t1 = np.ones((1, 1), np.float32, order="F")
    c1 = np.zeros((1, 1), np.float32, order="F")
    v1 = np.ones(1, np.float32)
    y1 = np.zeros(1, np.float32)
    over_gemm = per_call(lambda: sgemm(1.0, t1, t1, beta=1.0, c=c1, overwrite_c=1))
    over_gemv = per_call(lambda: sgemv(1.0, t1, v1, beta=1.0, y=y1, overwrite_y=1))

    bounds = {}
    for d in json.loads(ARGS.configs):
        cfg = config_from_dict(d)
        total = 0.0
        for layer in range(cfg.L):
            # (G, n_in) input projection, then per step (G, P) recurrent (+ (P, H) projection)
            (G, n_in), *steps = CELL.layer_gemms(cfg, layer)
            x = np.asfortranarray(rng.standard_normal((cfg.T * cfg.B, n_in), dtype=np.float32))
            w = np.asfortranarray(rng.standard_normal((n_in, G), dtype=np.float32))
            g = np.zeros((cfg.T * cfg.B, G), np.float32, order="F")
            proj = per_call(lambda: sgemm(1.0, x, w, c=g, overwrite_c=1)) - over_gemm
            for rows, depth in steps:
                whh = np.asfortranarray(rng.standard_normal((depth, rows), dtype=np.float32))
                if cfg.B == 1:
                    h = np.ones(depth, np.float32)
                    gs = np.zeros(rows, np.float32)
                    whhT = np.asfortranarray(whh.T)
                    rec = per_call(lambda: sgemv(1.0, whhT, h, beta=1.0, y=gs, overwrite_y=1)) - over_gemv
                else:
                    h = np.asfortranarray(rng.standard_normal((cfg.B, depth), dtype=np.float32))
                    gs = np.zeros((cfg.B, rows), np.float32, order="F")
                    rec = per_call(lambda: sgemm(1.0, h, whh, beta=1.0, c=gs, overwrite_c=1)) - over_gemm
                total += cfg.T * max(rec, 0.0)
            total += max(proj, 0.0)
        bounds[cfg.name] = 1e3 * total
    return {"gflops": gflops, "gflops_best": gflops_best, "gemm_bound_ms": bounds,
            "call_overhead_us": {"sgemm": 1e6 * over_gemm, "sgemv": 1e6 * over_gemv},
            "libraries": libraries, "blas": _blas_in_use()}


def _gemm_rate(matmul, n, reps):
    """GFLOP/s (median, best) of an n^3 float32 product, after one warm-up call."""
    matmul()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        matmul()
        ts.append(time.perf_counter() - t0)
    return {"gflops": 2 * n ** 3 / np.median(ts) / 1e9, "gflops_best": 2 * n ** 3 / np.min(ts) / 1e9}


def _other_gemms(a, b, reps):
    """The same 2048^3 sgemm through NumPy's own BLAS and through PyTorch (MKL/oneDNN),
    where installed: the machine's limit is the best GEMM on it, not SciPy's."""
    n = a.shape[0]
    out = {}
    ac, bc = np.ascontiguousarray(a), np.ascontiguousarray(b)
    c = np.empty_like(ac)
    out["numpy"] = _gemm_rate(lambda: np.matmul(ac, bc, out=c), n, reps)
    clstm_rate = _clstm_gemm(ac, bc, reps)
    if clstm_rate is not None:
        out["clstm"] = clstm_rate
    try:
        import torch
    except ImportError:
        return out
    torch.set_num_threads(ARGS.threads)
    ta, tb = torch.from_numpy(ac), torch.from_numpy(bc)
    tc = torch.empty_like(ta)
    out["torch"] = _gemm_rate(lambda: torch.mm(ta, tb, out=tc), n, reps)
    out["torch"]["version"] = torch.__version__
    return out


def _clstm_gemm(a, b, reps):
    """The same product on clstm's own small-GEMM kernel (``_scan.packed_matmul``
    on b packed once, as a forward packs a weight once for its T products): the
    rows split into one contiguous share per thread, each on a Python thread
    (the kernel runs without the GIL). None where the build has no such kernel."""
    from concurrent.futures import ThreadPoolExecutor

    from clstm import _scan
    if not _scan.HAVE_PACKED_GEMM:
        return None
    n, k = a.shape[0], ARGS.threads
    c = np.empty((n, b.shape[1]), np.float32)
    bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]
    shares = [(np.ascontiguousarray(a[r0:r1]), c[r0:r1]) for r0, r1 in bounds]
    packed = _scan.pack_weight(b, False)

    def share(s):
        _scan.packed_matmul(s[0], b, False, s[1], False, packed)
    if k == 1:
        return _gemm_rate(lambda: share(shares[0]), n, reps)
    with ThreadPoolExecutor(k) as pool:
        return _gemm_rate(lambda: list(pool.map(share, shares)), n, reps)


def _blas_in_use():
    """threadpoolctl's view of every BLAS loaded here (SciPy's is the one clstm calls):
    library, version, the kernel it dispatched to (OpenBLAS' 'architecture'), threads."""
    from threadpoolctl import threadpool_info
    keep = ("user_api", "internal_api", "prefix", "version", "architecture",
            "threading_layer", "num_threads")
    return [dict({k: info.get(k) for k in keep}, filepath=os.path.basename(info["filepath"]),
                 owner=_owner_of(info["filepath"]))
            for info in threadpool_info() if info.get("user_api") == "blas"]


def _owner_of(path):
    """Which package vendors a shared library (numpy.libs, scipy.libs, torch/lib, ...)."""
    parts = path.replace("\\", "/").split("/")
    for part in reversed(parts[:-1]):
        if part.endswith(".libs") or part in ("numpy", "scipy", "torch"):
            return part.removesuffix(".libs")
    return "system"


def probe_fit():
    """Estimator-level fit (fit_bench.CASES: ts-small, forecast)."""
    import fit_bench
    return fit_bench.run(ARGS.framework, ARGS.threads, quick=ARGS.quick, case=ARGS.case,
                         reps=ARGS.reps)


def main():
    if ARGS.mode == "serve":
        serve()
        return
    probe = {"rss": probe_rss, "sgemm": probe_sgemm, "fit": probe_fit}[ARGS.mode]
    try:
        result = probe()
        result["ok"] = True
    except ImportError as exc:
        result = {"ok": False, "missing": True, "error": f"{type(exc).__name__}: {exc}"}
    except Exception:
        result = {"ok": False, "error": traceback.format_exc()}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
