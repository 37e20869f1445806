#!/usr/bin/env python
"""clstm benchmark driver: clstm vs torch.nn.LSTM, Keras 3/TensorFlow, ONNX Runtime, NumPy.

Each framework runs in its own worker process pinned to a thread count; rounds
are interleaved across frameworks; every peer is first checked to compute the
same thing as clstm on weights exported from clstm. See benchmarks/README.md.

    python benchmarks/run.py                 # full run, 1 and 2 threads (< 20 min)
    python benchmarks/run.py --quick         # smoke run (< 3 min)
    python benchmarks/run.py --threads 1 --configs ts-small --shape 8,20,4,16
    python benchmarks/run.py --cell gru peephole cifg cifg-peephole   # the cell family
"""

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from common import (BASELINE, CELLS, CONFIGS, EPS, FRAMEWORK_TASKS, FRAMEWORKS, LR, PEERS,  # noqa: E402
                    TASKS, compile_c_program, parse_shape, run_c_program, thread_env)

WORKER = os.path.join(HERE, "workers", "worker.py")

#: DESIGN.md section 4: speed-ratio targets (best-peer time / clstm time) at 1 / 2 threads.
TARGETS = {
    "ts-small": {"inference": (1.7, 2.2), "training": (2.5, 4.0)},
    "ts-medium": {"inference": (1.2, 1.2), "training": (1.5, 2.0)},
    "nlp-large": {"inference": (1.05, 1.05), "training": (1.1, 1.1)},
    "stream": {"inference": (2.0, 2.0), "training": (4.0, 5.0)},
    "stacked": {"inference": (1.1, 1.1), "training": (1.2, 1.3)},
}

# Correctness tolerances (float32) for a peer against clstm on copied weights.
TOL_OUT = 1e-4          # max |out - out_clstm| (outputs lie in (-1, 1))
TOL_LOSS = 1e-4         # relative
TOL_GRAD = 1e-3         # max |g - g_clstm| / max |g_clstm|, per tensor
CLEAR_OF_EPS = 1e3      # a clear gradient: above this many Adam epsilons (and 1e-3 of the max)
TOL_POST_FRAC = 0.01    # after one Adam step: at most 1% of the entries with a clear
#                         gradient may differ by > LR/2 (the first step is ~LR*sign(g))


class CheckFailed(RuntimeError):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- workers -----------------------------------------------------------------
class Worker:
    """A framework's process: JSON commands on stdin, one JSON answer per line on stdout."""

    def __init__(self, framework, threads, python, log_dir, cell="lstm", log_name=None):
        self.framework, self.threads = framework, threads
        env = dict(os.environ)
        env.update(thread_env(threads))
        self.log_path = os.path.join(log_dir, f"{log_name or framework}-t{threads}.log")
        self._log = open(self.log_path, "w")
        self.hello = None
        try:
            self.proc = subprocess.Popen(
                [python, WORKER, "--framework", framework, "--threads", str(threads), "--cell", cell,
                 "serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                bufsize=1, env=env)
        except OSError as exc:      # e.g. a --python interpreter that does not exist
            self.proc = None
            self.hello = {"ok": False, "error": f"cannot start {python}: {exc}"}

    def wait_hello(self):
        if self.proc is None:
            return self.hello
        line = self.proc.stdout.readline()
        if not line:
            self.hello = {"ok": False, "error": f"worker exited (see {self.log_path}): "
                          + self.log_tail()}
        else:
            self.hello = json.loads(line)
        return self.hello

    def log_tail(self, n=15):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def call(self, cmd, **kw):
        kw["cmd"] = cmd
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.framework} worker died during {cmd!r}:\n{self.log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.framework} worker failed {cmd!r}:\n{reply.get('error')}")
        return reply

    def close(self):
        if self.proc is None:
            self._log.close()
            return
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# Linux carries a process' RSS at fork into the child's ru_maxrss (kept across exec), so
# a probe forked straight from the driver (hundreds of MiB of check arrays) would report at
# least the driver's size. Probes are started through this small launcher instead.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def run_probe(python, threads, mode, *extra, timeout=600):
    """A probe in a fresh worker process (via a small launcher); returns its RESULT dict."""
    env = dict(os.environ)
    env.update(thread_env(threads))
    cmd = [sys.executable, "-c", LAUNCHER, python, WORKER, "--threads", str(threads), mode, *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"ok": False, "error": (proc.stderr or proc.stdout)[-2000:]}


# -- machine idleness --------------------------------------------------------
def _cpu_times():
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return idle, sum(fields[:8])


def busy_fraction(sample_s=0.25):
    """Fraction of all cores busy over a short sample (our workers are idle then)."""
    try:
        i0, t0 = _cpu_times()
        time.sleep(sample_s)
        i1, t1 = _cpu_times()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1e-9)
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)


# Two threads passing a counter back and forth: the mean round trip in ns. On
# the 2-core KVM VMs of this project there are periods of minutes in which it
# takes ~510 ns instead of ~105 (a core sees the other's writes late), which
# slow every framework's two-thread calls (PyTorch's stream inference 0.27 ->
# 0.63 ms) and clstm's per-step teams most.
CROSS_CORE_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long n, warm;
static _Alignas(64) volatile long ping;
static _Alignas(64) volatile long pong;
static void *echo(void *arg)
{
    (void)arg;
    for (long i = 1; i <= warm + n; i++) {
        while (__atomic_load_n(&ping, __ATOMIC_ACQUIRE) != i) ;
        __atomic_store_n(&pong, i, __ATOMIC_RELEASE);
    }
    return NULL;
}
int main(int argc, char **argv)
{
    struct timespec t0, t1;
    pthread_t t;
    n = atol(argv[1]);
    warm = n;       /* (untimed: the other thread's core may first have to wake up) */
    pthread_create(&t, NULL, echo, NULL);
    for (long i = 1; i <= warm + n; i++) {
        if (i == warm + 1)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        __atomic_store_n(&ping, i, __ATOMIC_RELEASE);
        while (__atomic_load_n(&pong, __ATOMIC_ACQUIRE) != i) ;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(t, NULL);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""


class CrossCoreProbe:
    """The round trip of CROSS_CORE_C, compiled once (None without a compiler)."""

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="clstm-cross-core-")
        try:
            self.exe = compile_c_program(CROSS_CORE_C, self._dir, ("-O2", "-pthread"))
        except (OSError, subprocess.SubprocessError):
            self.exe = None

    def round_trip_ns(self, trips=50000):
        if self.exe is None:
            return None
        out = subprocess.run([self.exe, str(trips)], capture_output=True, text=True,
                             timeout=60)
        return float(out.stdout) if out.returncode == 0 else None

    def close(self):
        shutil.rmtree(self._dir, ignore_errors=True)


class IdleWaiter:
    """--wait-idle: before each timed batch, wait (up to `timeout` s) until the
    cores are idle and, before a two-thread batch, until a cross-core round
    trip takes at most `cross_core_ns` (the VM's slow periods; None: no check)."""

    def __init__(self, enabled, threshold, timeout, cross_core_ns=None):
        self.enabled, self.threshold, self.timeout = enabled, threshold, timeout
        self.waited_s = 0.0
        self.timeouts = 0
        self.cross_core_ns = cross_core_ns
        self.probe = CrossCoreProbe() if enabled and cross_core_ns else None
        self.round_trips = []          # the last round trip measured before each batch
        self.slow_timeouts = 0         # waits in a row that timed out on slow cores

    def _slow_cores(self):
        self._last = self.probe.round_trip_ns()
        return self._last is not None and self._last > self.cross_core_ns

    def wait(self, n_threads=1):
        if not self.enabled:
            return
        start, self._last = time.time(), None
        # (after 3 waits in a row that timed out on slow cores, the rest of the
        # config's task goes on without the check: new_case starts it again)
        check = n_threads > 1 and self.probe is not None and self.slow_timeouts < 3
        while busy_fraction() > self.threshold or (check and self._slow_cores()):
            if time.time() - start > self.timeout:
                self.timeouts += 1
                if check and self._last is not None and self._last > self.cross_core_ns:
                    self.slow_timeouts += 1
                break
            time.sleep(1.0)
        else:
            if check:
                self.slow_timeouts = 0
        if self._last is not None:
            self.round_trips.append(self._last)
        self.waited_s += time.time() - start

    def new_case(self):
        """A new config's task: check the cores again (see wait)."""
        self.slow_timeouts = 0

    def summary(self):
        rts = sorted(self.round_trips)
        return {"enabled": self.enabled, "waited_s": self.waited_s, "timeouts": self.timeouts,
                "cross_core_limit_ns": self.cross_core_ns,
                "cross_core_ns": ({"n": len(rts), "median": rts[len(rts) // 2], "max": rts[-1]}
                                  if rts else None)}

    def close(self):
        if self.probe is not None:
            self.probe.close()


# -- correctness ---------------------------------------------------------------
def compare(ref, got, framework, tasks):
    """Compare a peer's check outputs with clstm's; returns a report dict."""
    report = {"passed": True, "errors": {}, "failures": []}

    def fail(what):
        report["passed"] = False
        report["failures"].append(what)

    if "inference" in tasks:
        if got["out"].shape != ref["out"].shape:
            fail(f"out shape {got['out'].shape} != {ref['out'].shape}")
        else:
            err = float(np.max(np.abs(got["out"] - ref["out"])))
            report["errors"]["out_max_abs"] = err
            if not err <= TOL_OUT:
                fail(f"out differs by {err:.3g} (tolerance {TOL_OUT})")
    if "training" in tasks:
        lr, lg = float(ref["loss"]), float(got["loss"])
        rel = abs(lg - lr) / max(abs(lr), 1e-12)
        report["errors"]["loss_rel"] = rel
        if not rel <= TOL_LOSS:
            fail(f"loss {lg} vs {lr} (relative {rel:.3g})")
        worst = 0.0
        for key in [k for k in ref if k.startswith("grad/")]:
            if key not in got:
                fail(f"{key} missing")
                continue
            if got[key].shape != ref[key].shape:
                fail(f"{key} shape {got[key].shape} != {ref[key].shape}")
                continue
            err = float(np.max(np.abs(got[key] - ref[key])) / max(np.max(np.abs(ref[key])), 1e-30))
            worst = max(worst, err)
            if not err <= TOL_GRAD:
                fail(f"{key} differs by {err:.3g} of its scale (tolerance {TOL_GRAD})")
        report["errors"]["grad_rel_max"] = worst
        worst_frac, n_post = 0.0, 0
        for key in [k for k in ref if k.startswith("post/")]:
            if key not in got:
                continue      # e.g. Keras' fused bias
            n_post += 1
            diff = np.abs(got[key] - ref[key])
            # Adam variants put epsilon before or after the bias correction (Keras and
            # clstm: eps/sqrt(1-beta2^t) in torch's terms, ~32 eps at the first step),
            # which changes the first step of entries whose gradient is within ~1e3 eps:
            # compare entries with a clear gradient, clear of the tensor's largest and of
            # epsilon (a tensor of small gradients, e.g. peepholes, has many near eps).
            g = np.abs(ref["grad/" + key[len("post/"):]]) if "grad/" + key[len("post/"):] in ref else None
            if g is not None:
                diff = diff[g > max(1e-3 * g.max(), CLEAR_OF_EPS * EPS)]
            frac = float(np.mean(diff > 0.5 * LR)) if diff.size else 0.0
            worst_frac = max(worst_frac, frac)
            dmax = float(np.max(np.abs(got[key] - ref[key])))
            if frac > TOL_POST_FRAC or dmax > 2.5 * LR:
                fail(f"{key} after one Adam step: {100 * frac:.2g}% of entries differ by > LR/2, "
                     f"max {dmax:.3g}")
        if n_post == 0:
            fail("no parameters to compare after the Adam step")
        report["errors"]["post_step_frac_off"] = worst_frac
    return report


def load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# -- the run -----------------------------------------------------------------
def summarize(times):
    return {"median_ms": statistics.median(times), "min_ms": min(times), "n": len(times)}


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        flags = info.get("Flags", "").split()
        return {"model": info.get("Model name", platform.processor()),
                "family": info.get("CPU family"), "model_number": info.get("Model"),
                "stepping": info.get("Stepping"), "hypervisor": info.get("Hypervisor vendor"),
                "cpus": info.get("CPU(s)"), "threads_per_core": info.get("Thread(s) per core"),
                "flags_avx512f": "avx512f" in flags, "flags_avx2": "avx2" in flags,
                "flags_fma": "fma" in flags, **_clock(info),
                "caches": {k: info[k] for k in ("L1d cache", "L2 cache", "L3 cache") if k in info}}
    except OSError:
        return {"model": platform.processor(), "cpus": os.cpu_count()}


def _clock(lscpu):
    """{"mhz": the clock the core's peak uses, "clock_source": where it came from,
    "mhz_lscpu": what lscpu / /proc/cpuinfo say}: the clock measured by a chain of
    dependent adds (one a cycle) where a C compiler is at hand, else lscpu's. Under
    a hypervisor lscpu often reports the nominal clock, well below the one the core
    runs at (2.6 GHz against 3.57 GHz measured on the Zen 4 VM of RESULTS.md)."""
    nominal = _clock_mhz(lscpu)
    measured = measured_clock_mhz()
    if measured:
        return {"mhz": measured, "clock_source": "measured", "mhz_lscpu": nominal}
    return {"mhz": nominal, "clock_source": "lscpu", "mhz_lscpu": nominal}


CLOCK_PROGRAM = r"""
#include <stdio.h>
#include <time.h>
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(void)
{
#if defined(__x86_64__)
#define ADD10 "add $1, %0\n" "add $1, %0\n" "add $1, %0\n" "add $1, %0\n" "add $1, %0\n" \
              "add $1, %0\n" "add $1, %0\n" "add $1, %0\n" "add $1, %0\n" "add $1, %0\n"
#elif defined(__aarch64__)
#define ADD10 "add %0, %0, #1\n" "add %0, %0, #1\n" "add %0, %0, #1\n" "add %0, %0, #1\n" \
              "add %0, %0, #1\n" "add %0, %0, #1\n" "add %0, %0, #1\n" "add %0, %0, #1\n" \
              "add %0, %0, #1\n" "add %0, %0, #1\n"
#endif
#ifdef ADD10
    double best = 0;
    for (int round = 0; round < 5; round++) {
        long x = 0, n = 20000000;
        double t0 = now();
        for (long i = 0; i < n; i++)
            __asm__ volatile(ADD10 : "+r"(x));
        double ghz = 10.0 * n / (now() - t0) / 1e9;
        if (ghz > best) best = ghz;
    }
    printf("%.1f\n", best * 1e3);
#else
    printf("0\n");
#endif
    return 0;
}
"""


def measured_clock_mhz():
    """The core clock in MHz from a chain of dependent integer adds (one a cycle on
    every x86-64 and AArch64 core), best of 5 rounds of ~60 ms; None without a C
    compiler or on another architecture."""
    try:
        mhz = float(run_c_program(CLOCK_PROGRAM, flags=("-O2",), timeout=60).strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return mhz if mhz > 0 else None


def _clock_mhz(lscpu):
    """The core clock in MHz: lscpu's maximum (boost) where it is known, else the
    current clock /proc/cpuinfo reports (under a hypervisor often the nominal one)."""
    for key in ("CPU max MHz", "CPU MHz"):
        try:
            return float(lscpu[key])
        except (KeyError, ValueError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except (OSError, ValueError):
        pass
    return None


# OpenBLAS settings some machines' environments force (an older OpenBLAS misbehaved on
# their CPU). Users' machines do not set them, so the benchmark's processes run without
# them; tests and CI leave the environment as it is.
UNSET_FOR_BENCHMARKS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def unset_forced_blas_settings(keep=False):
    """Remove UNSET_FOR_BENCHMARKS from this process' environment (inherited by every
    worker); returns {name: the value removed}."""
    if keep:
        return {}
    return {name: os.environ.pop(name) for name in UNSET_FOR_BENCHMARKS if name in os.environ}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="few short rounds, for smoke-testing (< 3 min)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--configs", nargs="*", default=None,
                   help=f"subset of {list(CONFIGS)} (default: all; none with --configs and no names)")
    p.add_argument("--shape", action="append", default=[], metavar="[NAME=]B,T,I,H[,L]",
                   help="an extra shape (repeatable)")
    p.add_argument("--cell", nargs="+", default=["lstm"], choices=list(CELLS), metavar="CELL",
                   help=f"recurrent cell(s), run one after the other: {', '.join(CELLS)} (default lstm). "
                        "Each cell's results go to results.json (lstm at the top, the others under "
                        "'cells', kept from the file already there) and a section of RESULTS.md")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS,
                   help="frameworks to run (each cell runs those of them that implement it)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    p.add_argument("--round-time", type=float, default=None,
                   help="seconds of calls per framework per round (default 0.3, quick 0.05)")
    p.add_argument("--warmup-time", type=float, default=None,
                   help="seconds of warm-up calls per case (default 0.5, quick 0.1)")
    p.add_argument("--wait-idle", action="store_true",
                   help="before each round, wait until the machine's other load is low")
    p.add_argument("--idle-threshold", type=float, default=0.10,
                   help="busy fraction of all cores counted as idle (default 0.10)")
    p.add_argument("--cross-core-ns", type=float, default=160.0,
                   help="with --wait-idle, before a two-thread batch also wait until two "
                        "threads pass a counter between cores in at most this many ns "
                        "(quiet: ~105 on the project's VMs, ~510 in their slow periods; "
                        "0: no check; default 160)")
    p.add_argument("--idle-timeout", type=float, default=120.0,
                   help="seconds to wait for idleness before going on anyway (default 120)")
    p.add_argument("--python", action="append", default=[], metavar="FRAMEWORK=PATH",
                   help="interpreter for one framework's worker, e.g. keras=/work/venvs/bench-tf/bin/python "
                        "(env CLSTM_BENCH_PYTHON_<FRAMEWORK> works too)")
    p.add_argument("--no-extras", action="store_true",
                   help="skip sgemm peak, import time, peak RSS and estimator fit")
    p.add_argument("--skip", nargs="*", default=[], choices=["sgemm", "import", "rss", "fit"],
                   help="skip some of the extras")
    p.add_argument("--out-dir", default=HERE, help="where RESULTS.md, results.json, ratios.png go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-blas-env", action="store_true",
                   help=f"keep {' and '.join(UNSET_FOR_BENCHMARKS)} if set (by default the run "
                        "unsets them, as users' machines do not set them, and records what it unset)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.round_time = args.round_time if args.round_time is not None else (0.05 if args.quick else 0.3)
    args.warmup_time = args.warmup_time if args.warmup_time is not None else (0.1 if args.quick else 0.5)
    if "clstm" not in args.frameworks and "lstm" in args.cell:
        p.error("clstm must be among --frameworks (it is the reference of every check and ratio)")
    return args


def interpreters(args):
    py = {f: os.environ.get(f"CLSTM_BENCH_PYTHON_{f.upper()}", sys.executable) for f in FRAMEWORKS}
    for item in args.python:
        name, _, path = item.partition("=")
        if name not in py or not path:
            raise SystemExit(f"--python expects FRAMEWORK=PATH with FRAMEWORK in {FRAMEWORKS}, got {item!r}")
        py[name] = path
    return py


def main(argv=None):
    args = parse_args(argv)
    t_begin = time.time()
    args.unset_env = unset_forced_blas_settings(args.keep_blas_env)
    if args.unset_env:
        log(f"unset for this run (users' machines do not set them): {args.unset_env}")
    configs = [CONFIGS[c] for c in (list(CONFIGS) if args.configs is None else args.configs)]
    configs += [parse_shape(s) for s in args.shape]
    if not configs:
        raise SystemExit("no configs to run")
    out_dir = os.path.abspath(args.out_dir)
    work = os.path.join(out_dir, "_work")
    os.makedirs(work, exist_ok=True)
    py = interpreters(args)
    # The command as typed (the driver script path made relative for readability).
    argv_shown = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv_shown)
    json_path = os.path.join(out_dir, "results.json")
    # The document: the LSTM's results at the top (as before the cell family), every other
    # cell's under "cells"; the cells this run does not touch are kept from the file.
    doc = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            doc = json.load(f)
        if "lstm" in args.cell:       # the top level is rewritten
            doc = {"cells": doc["cells"]} if doc.get("cells") else {}

    def save():
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1, default=float)

    case_paths = {}
    for name in args.cell:
        cell = CELLS[name]
        res = new_results(args, command, configs, py, cell)
        if cell.is_plain_lstm:
            cells = doc.get("cells")
            doc.clear()
            doc.update(res)
            if cells:
                doc["cells"] = cells
            res = doc
        else:
            doc.setdefault("cells", {})[name] = res
        rc = run_cell(args, cell, configs, py, work, res, case_paths, save)
        if rc:
            return rc
    import report
    report.write_markdown(doc, os.path.join(out_dir, "RESULTS.md"))
    if "meta" in doc:        # the chart is the LSTM's
        chart = report.write_chart(doc, os.path.join(out_dir, "ratios.png"))
        if chart is not None and "lstm" in args.cell:
            doc["notes"].append(chart)
            save()
    log(f"done in {time.time() - t_begin:.0f} s: {json_path}, RESULTS.md, ratios.png")
    for name in args.cell:
        res = doc if name == "lstm" else doc["cells"][name]
        if len(args.cell) > 1:
            print(f"\n{CELLS[name].title}:")
        print(report.headline(res))
        if res.get("ratios") and CELLS[name].baseline:
            print(f"overhead over clstm's plain LSTM (time / plain time) [goal]:\n"
                  + report.headline(res, "overhead"))
    return 0


def cell_frameworks(cell, args):
    """{worker name: (framework, cell it runs)}: the frameworks of args that implement the
    cell, plus clstm's plain LSTM as the baseline of an LSTM variant."""
    names = {f: (f, cell.name) for f in FRAMEWORKS if f in args.frameworks and f in cell.frameworks}
    if cell.baseline and "clstm" in names:
        names[BASELINE] = ("clstm", "lstm")
    return names


def new_results(args, command, configs, py, cell):
    fws = cell_frameworks(cell, args)
    return {
        "meta": {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "machine": cpu_model(), "python": sys.version.split()[0],
                 "platform": platform.platform(),
                 "interpreters": {f: py[fw] for f, (fw, _) in fws.items()},
                 "quick": args.quick, "rounds": args.rounds, "round_time_s": args.round_time,
                 "warmup_time_s": args.warmup_time, "wait_idle": args.wait_idle,
                 "threads": args.threads, "tasks": args.tasks,
                 "configs": [c.as_dict() for c in configs], "dtype": "float32",
                 "loadavg_start": os.getloadavg(), "env_unset": args.unset_env},
        "frameworks": {},
        "checks": [],
        "timings": [],
        "sgemm": {},
        "gemm_bound_ms": {},
        "ratios": [],
        "import_time": {},
        "memory": {},
        "estimator_fit": {},
        "notes": [],
    }


def run_cell(args, cell, configs, py, work, res, case_paths, save):
    """One cell's run: probes, then every thread count; fills res, returns an exit code."""
    t_begin = time.time()
    waiter = IdleWaiter(args.wait_idle, args.idle_threshold, args.idle_timeout,
                        args.cross_core_ns)
    fws = [f for f in FRAMEWORKS if f in args.frameworks]
    extras = set() if args.no_extras else {"sgemm", "import", "rss", "fit"} - set(args.skip)
    if not cell.is_plain_lstm:
        extras &= {"sgemm"}     # import time, memory and fit are the LSTM's (cell-independent)
        log(f"##### cell {cell.name}: {cell.title}")
    try:
        if "sgemm" in extras:
            for n in args.threads:
                log(f"sgemm peak and GEMM-shape bounds, {n} thread(s)")
                r = run_probe(py["clstm"], n, "sgemm", "--cell", cell.name, "--configs",
                              json.dumps([c.as_dict() for c in configs]), *(["--quick"] if args.quick else []))
                if r.get("ok"):
                    res["sgemm"][str(n)] = {"gflops": r["gflops"], "gflops_best": r["gflops_best"],
                                            "call_overhead_us": r["call_overhead_us"],
                                            "libraries": r.get("libraries", {})}
                    res["meta"]["blas"] = r.get("blas", [])
                    res["sgemm"][str(n)]["core_peak"] = core_peak(res["meta"]["machine"],
                                                                  r.get("libraries", {}), n)
                    res["gemm_bound_ms"][str(n)] = r["gemm_bound_ms"]
                else:
                    res["notes"].append(f"sgemm probe failed at {n} threads: {r.get('error')}")
        for n in args.threads:
            run_thread_count(args, n, cell, configs, py, work, res, case_paths, waiter)
            save()
        if "import" in extras:
            import_times(args, fws, py, res)
        if "rss" in extras:
            peak_memory(args, fws, py, res)
        if "fit" in extras:
            estimator_fit(args, fws, py, res)
    except CheckFailed as exc:
        waiter.close()
        res["notes"].append(f"ABORTED: {exc}")
        save()
        print(f"\nCORRECTNESS CHECK FAILED, nothing timed for it: {exc}", file=sys.stderr)
        return 2
    res["idle_wait"] = waiter.summary()
    waiter.close()
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["meta"]["elapsed_s"] = time.time() - t_begin
    compute_ratios(res, configs, args, cell)
    save()
    return 0


def run_thread_count(args, n, cell, configs, py, work, res, case_paths, waiter):
    names = cell_frameworks(cell, args)
    tag = "" if cell.is_plain_lstm else f"{cell.name}-"       # file names of a cell's run
    log(f"=== {n} thread(s): starting workers {list(names)}")
    workers = {f: Worker(fw, n, py[fw], work, cell=c, log_name=tag + f) for f, (fw, c) in names.items()}
    live = {}
    for f, w in workers.items():
        hello = w.wait_hello()
        entry = res["frameworks"].setdefault(f, {"available": False})
        if hello.get("ok"):
            live[f] = w
            entry.update(available=True, version=hello["version"], interpreter=py[names[f][0]])
            entry.setdefault("import_s_in_worker", {})[str(n)] = hello["import_s"]
        else:
            w.close()
            lines = str(hello.get("error", "")).strip().splitlines() or ["no reason given"]
            entry["note"] = f"skipped: {lines[-1]}"
            note = f"{f} ({n} threads) {entry['note']}"
            if note not in res["notes"]:
                res["notes"].append(note)
            log(note)
    if "clstm" not in live and cell.is_plain_lstm:
        raise SystemExit(f"clstm worker failed to start:\n{workers['clstm'].log_tail()}")
    # The reference of the checks and the ratios: clstm; without it (a cell clstm does not
    # have yet), a peer, so that the peers are still checked against each other.
    peers = [f for f in live if f != BASELINE]
    if not peers:
        note = f"{cell.name}, {n} thread(s): no framework that implements the cell could start"
        res["notes"].append(note)
        log(note)
        for w in live.values():
            w.close()
        return

    def tasks_of(f):
        return [t for t in args.tasks if t in FRAMEWORK_TASKS[names[f][0]]]

    ref = max(peers, key=lambda f: len(tasks_of(f)))      # the first of those that run the most

    try:
        # 1. cases: weights drawn by the reference (clstm), written once per cell;
        #    the baseline draws its own (plain LSTM) case
        for cfg in configs:
            for f in [ref] + [f for f in live if f not in peers]:
                key = (names[f][1], cfg.name)
                if key not in case_paths:
                    c_tag = "" if key[0] == "lstm" else f"{key[0]}-"
                    path = os.path.join(work, f"case-{c_tag}{cfg.name}.npz")
                    live[f].call("export", config=cfg.as_dict(), seed=args.seed, path=path)
                    case_paths[key] = path
        # 2. correctness: every peer against the reference on the copied weights, before any timing
        #    (the baseline runs its check too, unchecked: like every worker, it then times a
        #    runner whose functions have all run once)
        for cfg in configs:
            outs = {}
            for f in live:
                tasks = tasks_of(f)
                if f not in (ref, BASELINE):      # a peer is compared on what the reference ran
                    tasks = [t for t in tasks if t in tasks_of(ref)]
                if not tasks:
                    continue
                out_path = os.path.join(work, f"check-{tag}{cfg.name}-{f}-t{n}.npz")
                live[f].call("check", config=cfg.as_dict(), case_path=case_paths[(names[f][1], cfg.name)],
                             out_path=out_path, tasks=tasks)
                if f != BASELINE:
                    outs[f] = (load_npz(out_path), tasks)
            ref_out = outs[ref][0] if ref in outs else None
            for f, (got, tasks) in outs.items() if ref_out is not None else ():
                if f == ref:
                    continue
                rep = compare(ref_out, got, f, tasks)
                rep.update(config=cfg.name, framework=f, threads=n, tasks=tasks)
                if ref != "clstm":
                    rep["reference"] = ref
                res["checks"].append(rep)
                status = "ok" if rep["passed"] else "FAILED"
                log(f"check {tag}{cfg.name:<10} {f:<12} {status} "
                    + " ".join(f"{k}={v:.2g}" for k, v in rep["errors"].items()))
                if not rep["passed"]:
                    raise CheckFailed(f"{f} vs {ref} on {tag}{cfg.name} at {n} threads: "
                                      + "; ".join(rep["failures"]))
        # 3. timing: per case, warm up every framework, then interleaved rounds
        for cfg in configs:
            for task in args.tasks:
                fw_task = [f for f in live if task in tasks_of(f)]
                reps = {}
                for f in fw_task:
                    r = live[f].call("prepare", config=cfg.as_dict(),
                                     case_path=case_paths[(names[f][1], cfg.name)],
                                     task=task, warmup_s=args.warmup_time,
                                     min_calls=1 if args.quick else 3)
                    reps[f] = int(min(1000, max(1, round(args.round_time / max(r["estimate_ms"] / 1e3, 1e-7)))))
                times = {f: [] for f in fw_task}
                waiter.new_case()
                for rnd in range(args.rounds):
                    order = fw_task[rnd % len(fw_task):] + fw_task[:rnd % len(fw_task)]
                    for f in order:
                        waiter.wait(n)
                        time.sleep(0.02)   # let the previous worker's spinning threads park
                        times[f] += live[f].call("bench", task=task, reps=reps[f])["times_ms"]
                line = []
                for f in fw_task:
                    s = summarize(times[f])
                    s.update(config=cfg.name, task=task, threads=n, framework=f,
                             gflops=cfg.flops(task, CELLS[names[f][1]]) / (s["median_ms"] * 1e6))
                    res["timings"].append(s)
                    line.append(f"{f}={s['median_ms']:.3g}")
                log(f"{n}t {tag}{cfg.name:<10} {task:<9} median ms: " + " ".join(line))
            for f in live:
                live[f].call("release", config=cfg.name)
    finally:
        for w in live.values():
            w.close()


def import_times(args, fws, py, res):
    reps = 3 if args.quick else 7
    modules = {"clstm": "import clstm", "torch": "import torch",
               "keras": "import tensorflow, keras", "onnxruntime": "import onnxruntime",
               "numpy": "import numpy"}
    code = ("import time; t0 = time.perf_counter(); {stmt}; "
            "print('IMPORT', time.perf_counter() - t0)")
    env = dict(os.environ)
    env.update(thread_env(1))
    for f in fws:
        if not res["frameworks"].get(f, {}).get("available"):
            continue
        log(f"import time of {f} ({reps} fresh processes)")
        ts = []
        for _ in range(reps):
            p = subprocess.run([py[f], "-c", code.format(stmt=modules[f])], capture_output=True,
                               text=True, env=env, cwd="/")
            line = [x for x in p.stdout.splitlines() if x.startswith("IMPORT")]
            if p.returncode or not line:
                res["notes"].append(f"import probe of {f} failed: {p.stderr[-300:]}")
                break
            ts.append(float(line[0].split()[1]))
        if ts:
            res["import_time"][f] = {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts),
                                     "statement": modules[f]}


def peak_memory(args, fws, py, res):
    for f in fws:
        if "training" not in FRAMEWORK_TASKS[f] or not res["frameworks"].get(f, {}).get("available"):
            continue
        steps = 2 if args.quick else 5
        log(f"peak RSS of {f}: {steps} nlp-large training steps in a fresh process")
        r = run_probe(py[f], 1, "rss", "--framework", f, "--config", "nlp-large", "--steps", str(steps))
        if r.get("ok"):
            res["memory"][f] = {k: r[k] for k in ("peak_rss_mib", "after_import_mib", "interpreter_mib",
                                                  "vm_hwm_mib", "steps", "config")}
        else:
            res["notes"].append(f"rss probe of {f} failed: {str(r.get('error'))[-300:]}")


def estimator_fit(args, fws, py, res):
    """LSTMRegressor.fit vs a PyTorch loop vs Keras model.fit, for each case of
    workers/fit_bench.py (ts-small, forecast); quick: first thread count only."""
    for case in ("ts-small", "forecast"):
        for n in args.threads[:1] if args.quick else args.threads:
            for f in ("clstm", "torch", "keras"):
                if f not in fws or not res["frameworks"].get(f, {}).get("available"):
                    continue
                log(f"estimator fit {case}, {f}, {n} thread(s)")
                r = run_probe(py[f], n, "fit", "--framework", f, "--case", case,
                              *(["--quick"] if args.quick else []))
                if r.get("ok"):
                    res["estimator_fit"].setdefault(case, {}).setdefault(str(n), {})[f] = r
                elif f == "clstm":
                    res["notes"].append("estimator fit benchmark skipped: "
                                        + str(r.get("error", "")).strip().splitlines()[-1])
                    return
                else:
                    res["notes"].append(f"fit benchmark of {f} ({case}) failed: "
                                        f"{str(r.get('error'))[-300:]}")


def core_peak(machine, libraries, threads):
    """The machine's limit per core: FMA units x vector width x 2 flops x clock.

    The vector width comes from the CPU flags (AVX-512: 16 floats, AVX2: 8), the
    clock from ``machine["mhz"]`` (measured where it could be, see _clock); the
    number of FMA units is the one that the best GEMM measured
    on the machine (SciPy's, NumPy's, PyTorch's or clstm's own) needs to be possible: the smallest
    count whose peak is at least that GEMM's rate per core. Returns the peak, its
    parts and which GEMM came closest."""
    best_name, best = max(((k, v["gflops_best"]) for k, v in libraries.items()),
                          key=lambda kv: kv[1], default=(None, None))
    width = 16 if machine.get("flags_avx512f") else 8 if machine.get("flags_avx2") else 4
    mhz = machine.get("mhz")
    if best is None or not mhz:
        return {"best_gemm": best_name, "best_gemm_gflops": best}
    per_unit = width * 2 * mhz / 1e3                      # GFLOP/s of one FMA unit
    units = max(1, math.ceil(best / threads / per_unit - 0.02))
    peak = units * per_unit * threads
    return {"best_gemm": best_name, "best_gemm_gflops": best, "fma_units": units,
            "vector_floats": width, "ghz": mhz / 1e3, "peak_gflops": peak,
            "best_gemm_share": best / peak}


def machine_limit(sgemm):
    """GFLOP/s of the best GEMM measured (best repetition), or None."""
    rates = [v["gflops_best"] for v in sgemm.get("libraries", {}).values()]
    rates.append(sgemm.get("gflops_best") or 0.0)
    return max(rates) or None


def compute_ratios(res, configs, args, cell=CELLS["lstm"]):
    med = {(t["config"], t["task"], t["threads"], t["framework"]): t["median_ms"] for t in res["timings"]}
    for cfg in configs:
        for task in args.tasks:
            for n in args.threads:
                c = med.get((cfg.name, task, n, "clstm"))
                if c is None:
                    continue
                peers = {f: med[(cfg.name, task, n, f)] for f in PEERS if (cfg.name, task, n, f) in med}
                entry = {"config": cfg.name, "task": task, "threads": n, "clstm_ms": c,
                         "peer_ms": peers, "ratio_vs": {f: v / c for f, v in peers.items()}}
                if peers:
                    best = min(peers, key=peers.get)
                    entry.update(best_peer=best, best_peer_ms=peers[best], ratio=peers[best] / c)
                base = med.get((cfg.name, task, n, BASELINE))
                if base is not None:      # an LSTM variant: its cost over clstm's plain LSTM
                    entry.update(baseline_ms=base, overhead=c / base)
                    if cell.overhead_goal:
                        entry.update(overhead_goal=cell.overhead_goal,
                                     overhead_met=c / base <= cell.overhead_goal)
                # the machine limit: the best repetition (robust to other load) of the best
                # GEMM on the machine (SciPy's, NumPy's, PyTorch's or clstm's own)
                peak = machine_limit(res["sgemm"].get(str(n), {}))
                if peak:
                    flop_ms = cfg.flops(task, cell) / (peak * 1e6)
                    entry["flop_bound_ms"] = flop_ms
                    if "best_peer_ms" in entry:
                        entry["ceiling"] = entry["best_peer_ms"] / flop_ms
                    entry["clstm_frac_of_peak"] = flop_ms / c
                gb = res["gemm_bound_ms"].get(str(n), {}).get(cfg.name)
                if gb is not None and task == "inference":
                    entry["gemm_shape_bound_ms"] = gb
                tgt = TARGETS.get(cfg.name, {}).get(task) if cell.lstm_targets else None
                if tgt and n in (1, 2):
                    entry["target"] = tgt[n - 1]
                    if "ratio" in entry:
                        entry["target_met"] = entry["ratio"] >= tgt[n - 1]
                res["ratios"].append(entry)


if __name__ == "__main__":
    sys.exit(main())
