"""Render results.json into RESULTS.md and the ratio chart (ratios.png).

    python benchmarks/report.py [benchmarks/results.json]   # re-render without re-running

results.json holds the LSTM's results at the top level and every other cell's
(``run.py --cell``) under ``"cells"``, each with the same layout; RESULTS.md gets
the LSTM's sections, then one section per cell. The chart is the LSTM's.
"""

import json
import os
import sys

from common import BASELINE, CELLS, FRAMEWORKS, PEERS, side_sections

PRETTY = {"clstm": "clstm", "torch": "PyTorch", "keras": "Keras/TF", "onnxruntime": "ONNX RT",
          "numpy": "NumPy", BASELINE: "clstm plain LSTM"}


def _f(x, digits=3):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _ratio(x):
    return "–" if x is None else f"{x:.2f}"


def _configs(res):
    return [c["name"] for c in res["meta"]["configs"]]


def _ratio_entry(res, cfg, task, n):
    for r in res["ratios"]:
        if r["config"] == cfg and r["task"] == task and r["threads"] == n:
            return r
    return None


def headline(res, metric="ratio"):
    """Config x (inference, training) x threads: best-peer / clstm ratios (target in brackets);
    metric "overhead": an LSTM variant's time / clstm's plain LSTM's (goal in brackets)."""
    threads = res["meta"]["threads"]
    tasks = res["meta"]["tasks"]
    head = ["config"] + [f"{task} {n}t" for task in tasks for n in threads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg in _configs(res):
        row = [cfg]
        for task in tasks:
            for n in threads:
                r = _ratio_entry(res, cfg, task, n)
                if r is None or metric not in r:
                    row.append("–")
                    continue
                if metric == "overhead":
                    row.append(f"{r['overhead']:.2f}"
                               + (f" [{r['overhead_goal']:g}]" if "overhead_goal" in r else ""))
                    continue
                cell = f"{r['ratio']:.2f} ({PRETTY[r['best_peer']]})"
                if "target" in r:
                    cell += f" [{r['target']:g}]"
                row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _timing_table(res, task, n):
    med = {(t["config"], t["framework"]): t for t in res["timings"]
           if t["task"] == task and t["threads"] == n}
    fws = [f for f in FRAMEWORKS + (BASELINE,) if any(k[1] == f for k in med)]
    head = (["config"] + [f"{PRETTY[f]} ms" for f in fws]
            + ["best peer", "ratio", "target", "ceiling", "clstm GFLOP/s", "% of machine peak"])
    if task == "inference":
        head.insert(len(fws) + 1, "GEMM-shape bound ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg in _configs(res):
        if not any((cfg, f) in med for f in fws):
            continue
        row = [cfg]
        for f in fws:
            t = med.get((cfg, f))
            row.append("–" if t is None else f"{_f(t['median_ms'])} (min {_f(t['min_ms'])})")
        r = _ratio_entry(res, cfg, task, n) or {}
        if task == "inference":
            row.append(_f(r.get("gemm_shape_bound_ms")))
        row += [PRETTY.get(r.get("best_peer"), "–"), _ratio(r.get("ratio")),
                _ratio(r.get("target")), _ratio(r.get("ceiling")),
                _f(med[(cfg, "clstm")]["gflops"]) if (cfg, "clstm") in med else "–",
                "–" if r.get("clstm_frac_of_peak") is None else f"{100 * r['clstm_frac_of_peak']:.0f}%"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _per_peer_table(res, task, n):
    rows = [r for r in res["ratios"] if r["task"] == task and r["threads"] == n]
    peers = [f for f in PEERS if any(f in r["ratio_vs"] for r in rows)]
    if not rows or not peers:
        return ""
    head = ["config"] + [f"vs {PRETTY[f]}" for f in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["config"]] + [_ratio(r["ratio_vs"].get(f)) for f in peers]) + " |")
    return "\n".join(lines)


def _cross_core_note(wait):
    """The cross-core round trips run.py waited on before two-thread batches."""
    rt = wait.get("cross_core_ns")
    if not rt:
        return ""
    return (f"; before each two-thread batch, two threads passing a counter between the cores "
            f"in at most {wait['cross_core_limit_ns']:.0f} ns a round trip (last measured before "
            f"each batch: median {rt['median']:.0f}, max {rt['max']:.0f} ns, {rt['n']} batches)")


def _frameworks_table(res):
    out = ["| framework | version | interpreter | note |", "|---|---|---|---|"]
    for f, e in res["frameworks"].items():
        out.append(f"| {PRETTY[f]} | {e.get('version', '–')} | `{e.get('interpreter', '–')}` | "
                   f"{e.get('note', '')} |")
    return out


def _timing_sections(res, level, title=""):
    """Per thread count and task: the timing table and the ratio against each peer."""
    out = []
    for n in res["meta"]["threads"]:
        for task in res["meta"]["tasks"]:
            out += [f"{level} {title}{task.capitalize() if not title else task}, {n} "
                    f"thread{'s' if n > 1 else ''}: median ms (min)", "", _timing_table(res, task, n), ""]
            t = _per_peer_table(res, task, n)
            if t:
                out += ["Ratio against each peer (peer time / clstm time):", "", t, ""]
    return out


def _checks_table(res):
    out = ["| config | peer | threads | passed | max errors |", "|---|---|---|---|---|"]
    for c in res["checks"]:
        errs = ", ".join(f"{k} {v:.2g}" for k, v in c["errors"].items())
        peer = PRETTY[c["framework"]] + (f" (vs {PRETTY[c['reference']]})" if "reference" in c else "")
        out.append(f"| {c['config']} | {peer} | {c['threads']} | "
                   f"{'yes' if c['passed'] else 'NO: ' + '; '.join(c['failures'])} | {errs} |")
    return out + [""]


def _cell_sections(name, res):
    """One cell's section of RESULTS.md (a cell other than the plain LSTM)."""
    cell, meta = CELLS[name], res["meta"]
    title = f"{cell.title} (`--cell {name}`)"
    peers = [PRETTY[f] for f in cell.frameworks if f != "clstm"]
    out = [f"## Cell: {title}", ""]
    if meta.get("quick"):
        out += ["> **Quick (smoke-test) run**: few, short rounds. Not a measurement to quote.", ""]
    what = (f"clstm against {', '.join(peers)} on the same weights (checked before timing)"
            if peers else "clstm only: no framework implements this cell, so no cross-framework check")
    if cell.baseline:
        what += ("; **overhead** = its time / the time of clstm's plain LSTM on the same shape "
                 f"(same B, T, I, H, L), goal at most {cell.overhead_goal:g}")
    out += [what + ". " + ("Ratio targets: the LSTM's of the same config (issue 8)."
                           if cell.lstm_targets else "No ratio target against the peers."), "",
            f"{meta['date']}, {meta['machine'].get('model')}, rounds {meta['rounds']}, "
            f"elapsed {meta.get('elapsed_s', 0):.0f} s; command: `{meta['command']}`", ""]
    out += _frameworks_table(res) + [""]
    if cell.baseline:
        out += [f"### {cell.title}: overhead over clstm's plain LSTM (variant time / plain time) [goal]", "",
                headline(res, "overhead"), ""]
    if cell.frameworks != ("clstm",):
        out += [f"### {cell.title}: speed ratio (best peer) [target]", "", headline(res), ""]
    out += _timing_sections(res, "###", f"{cell.title} ")
    if res["checks"]:
        out += [f"### {cell.title}: correctness checks (before timing)", ""] + _checks_table(res)
    if res["notes"]:
        out += [f"### {cell.title}: notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return out


def write_markdown(doc, path):
    """RESULTS.md: the LSTM's sections (if results.json has them), then one per other cell."""
    out = ["# clstm benchmark results", ""]
    cells = doc.get("cells", {})
    if "meta" in doc:
        out += _lstm_sections(doc, cells)
    # The hand-written analysis (targets met / not met, profiles, what would
    # close the gaps) lives in analysis.md beside RESULTS.md and is appended
    # on every re-render.
    analysis = os.path.join(os.path.dirname(os.path.abspath(path)), "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            out += [f.read().rstrip(), ""]
    for name in [c for c in CELLS if c in cells]:
        out += _cell_sections(name, cells[name])
    out += [SIDE_SECTIONS_MARK, ""]
    out += [text + "\n" for text in side_sections()]
    out += [RAW_DATA_LINE, ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


# RESULTS.md ends with the side sections (other benchmarks' own, from sections/*.md)
# between this mark and the raw-data line.
SIDE_SECTIONS_MARK = "<!-- side sections: benchmarks/sections/*.md -->"
RAW_DATA_LINE = "Raw data: `results.json`; chart: `ratios.png`. How to run: `README.md`."


def refresh_side_sections(path):
    """Rewrite only the side sections of an existing RESULTS.md (the rest as it is)."""
    with open(path) as f:
        doc = f.read()
    head = doc.split(SIDE_SECTIONS_MARK)[0].split("\n" + RAW_DATA_LINE)[0].rstrip("\n")
    parts = [head, "", SIDE_SECTIONS_MARK, ""] + [t + "\n" for t in side_sections()] + [RAW_DATA_LINE, ""]
    with open(path, "w") as f:
        f.write("\n".join(parts))


_LIBRARY_NAMES = {"scipy": "SciPy (`scipy.linalg.blas.sgemm`: the BLAS clstm calls)",
                  "numpy": "NumPy (`np.matmul`: NumPy's own BLAS)",
                  "torch": "PyTorch (`torch.mm`)",
                  "clstm": "clstm (`_scan.packed_matmul`: its own small-GEMM kernel, on a weight packed once)"}


def _machine_limit_section(res):
    """The machine's limit: the BLAS libraries and kernels in use, every GEMM measured,
    and the core's peak (FMA units x vector width x 2 x clock)."""
    meta = res["meta"]
    out = ["## Machine limit: the best GEMM on the machine (float32 2048³)", ""]
    if meta.get("env_unset"):
        out += ["Unset for this run (users' machines do not set them; tests and CI keep them): "
                + ", ".join(f"`{k}={v}`" for k, v in meta["env_unset"].items()) + ".", ""]
    blas = meta.get("blas") or []
    if blas:
        out += ["BLAS libraries loaded in the probe (threadpoolctl):", "",
                "| vendored by | library | version | kernel in use | threading |", "|---|---|---|---|---|"]
        out += [f"| {b.get('owner')} | `{b.get('filepath')}` ({b.get('internal_api')}) | {b.get('version')} "
                f"| {b.get('architecture')} | {b.get('threading_layer')} |" for b in blas]
        out.append("")
    out += ["| threads | GEMM | GFLOP/s (median) | GFLOP/s (best) |", "|---|---|---|---|"]
    for n, s in res["sgemm"].items():
        libraries = s.get("libraries") or {"scipy": {"gflops": s["gflops"], "gflops_best": s["gflops_best"]}}
        for name, r in libraries.items():
            out.append(f"| {n} | {_LIBRARY_NAMES.get(name, name)} | {r['gflops']:.1f} | {r['gflops_best']:.1f} |")
    peaks = [(n, s["core_peak"]) for n, s in res["sgemm"].items() if s.get("core_peak", {}).get("peak_gflops")]
    if peaks:
        out += ["", "| threads | core peak: FMA units x floats/vector x 2 x GHz | GFLOP/s | best GEMM "
                "| its share of the peak |", "|---|---|---|---|---|"]
        for n, p in peaks:
            out.append(f"| {n} | {p['fma_units']} x {p['vector_floats']} x 2 x {p['ghz']:.2f}"
                       f"{f' x {n} cores' if int(n) > 1 else ''} | {p['peak_gflops']:.0f} "
                       f"| {p['best_gemm']} {p['best_gemm_gflops']:.1f} | {100 * p['best_gemm_share']:.0f}% |")
        m = meta.get("machine", {})
        if m.get("clock_source") == "measured":
            clock = (f"clock measured by a chain of dependent adds, one a cycle; lscpu says "
                     f"{m['mhz_lscpu']:.0f} MHz" if m.get("mhz_lscpu") else
                     "clock measured by a chain of dependent adds, one a cycle")
        else:
            clock = "clock from lscpu"
        out += ["", "FMA units: the fewest that make the best measured GEMM possible at this clock "
                f"(vector width from the CPU flags, {clock}; a unit is one vector FMA a cycle, so a "
                "core that splits 512-bit FMAs over two 256-bit pipes counts one). Ceilings and "
                "\"% of machine peak\" use the best GEMM measured (its best repetition), not only "
                "SciPy's sgemm."]
    out.append("")
    return out


def _machine_details(m):
    """'family 25, model 1, 2 CPUs, ...' from what the run recorded (older runs recorded less)."""
    parts = [f"family {m['family']}, model {m['model_number']}" if m.get("family") else None,
             f"{m.get('cpus')} CPUs, {m.get('threads_per_core')} thread(s)/core",
             ", ".join(f"{flag} {m[key]}" for flag, key in
                       (("AVX2", "flags_avx2"), ("FMA", "flags_fma"), ("AVX-512F", "flags_avx512f"))
                       if key in m),
             f"{m['mhz']:.0f} MHz" if m.get("mhz") else None,
             ", ".join(f"{k} {v}" for k, v in m["caches"].items()) if m.get("caches") else None,
             f"under {m['hypervisor']}" if m.get("hypervisor") else None]
    return ", ".join(p for p in parts if p)


def _lstm_sections(res, cells):
    meta = res["meta"]
    m = meta["machine"]
    out = []
    if meta.get("quick"):
        out += ["> **Quick (smoke-test) run**: few, short rounds. Not a measurement to quote.", ""]
    out += [f"Ratios are **best-peer time / clstm time** (above 1 = clstm faster), from medians of "
            f"per-call times over {meta['rounds']} interleaved rounds, float32, each framework in its own "
            "process pinned to the thread count. \"ceiling\" = the ratio if clstm ran every FLOP at the "
            "machine's limit, the best GEMM measured on it (forward 2·T·B·4H·(I+H), training 3x). "
            "Targets from DESIGN.md §4.", "",
            "## Headline: speed ratio (best peer) [target]", "", headline(res), ""]
    if cells:
        out += ["Other cells, in their own sections below: "
                + ", ".join(f"{CELLS[c].title} (`--cell {c}`)" for c in CELLS if c in cells) + ".", ""]
    out += ["## Machine and software", "",
            f"- CPU: {m.get('model')} ({_machine_details(m)})",
            f"- Python {meta['python']} on {meta['platform']}",
            f"- Date: {meta['date']}; load average at start {tuple(round(x, 2) for x in meta['loadavg_start'])}"
            + (f", at end {tuple(round(x, 2) for x in meta['loadavg_end'])}" if "loadavg_end" in meta else ""),
            f"- Wait for idle: {meta['wait_idle']}"
            + (f" (waited {res['idle_wait']['waited_s']:.0f} s, {res['idle_wait']['timeouts']} timeouts)"
               if res.get("idle_wait", {}).get("enabled") else "")
            + _cross_core_note(res.get("idle_wait", {})),
            f"- Rounds {meta['rounds']}, ~{meta['round_time_s']} s per framework per round, warm-up "
            f"{meta['warmup_time_s']} s; elapsed {meta.get('elapsed_s', 0):.0f} s", ""]
    out += _frameworks_table(res)
    out += ["", "Command:", "", "```", meta["command"], "```", ""]
    if res["sgemm"]:
        out += _machine_limit_section(res)
        out += ["", "GEMM-shape bound: the time of the forward's own GEMMs at their real shapes "
                "(one input-projection GEMM per layer, then T recurrent GEMMs, GEMV at B=1) through "
                "SciPy's sgemm, Python call overhead subtracted, fastest of several blocks of calls.", ""]
    out += _timing_sections(res, "##")
    out += ["## Correctness checks (before timing, weights exported from clstm)", ""] + _checks_table(res)
    if res["import_time"]:
        out += ["## Import time (fresh process, in-process timer around the import)", "",
                "| framework | statement | median s | min s | vs clstm |", "|---|---|---|---|---|"]
        base = res["import_time"].get("clstm", {}).get("median_s")
        for f, r in res["import_time"].items():
            rel = f"{r['median_s'] / base:.1f}x" if base else "–"
            out.append(f"| {PRETTY[f]} | `{r['statement']}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {rel} |")
        out.append("")
    if res["memory"]:
        steps = next(iter(res["memory"].values()))["steps"]
        out += [f"## Peak RSS of a training process ({steps} nlp-large steps, 1 thread, fresh process, "
                "ru_maxrss)", "",
                "| framework | peak MiB (ru_maxrss) | VmHWM MiB | after import MiB | vs clstm |",
                "|---|---|---|---|---|"]
        base = res["memory"].get("clstm", {}).get("peak_rss_mib")
        for f, r in res["memory"].items():
            rel = f"{r['peak_rss_mib'] / base:.1f}x" if base else "–"
            out.append(f"| {PRETTY[f]} | {r['peak_rss_mib']:.0f} | {_f(r.get('vm_hwm_mib'))} | "
                       f"{r['after_import_mib']:.0f} | {rel} |")
        out.append("")
    if res["estimator_fit"]:
        out += ["## Estimator fit (workers/fit_bench.py: ts-small = 1,000 sequences of (50, 1), H=50, "
                "10 epochs; forecast = 230 windows of (20, 1), H=32, 100 epochs; batch 32, Adam)", "",
                "| case | threads | framework | median s | min s | ratio (peer / clstm) |",
                "|---|---|---|---|---|---|"]
        fits = res["estimator_fit"]
        if next(iter(fits)).isdigit():      # a results.json from before the cases
            fits = {"ts-small": fits}
        for case, by_threads in fits.items():
            for n, d in by_threads.items():
                base = d.get("clstm", {}).get("median_s")
                for f, r in d.items():
                    rel = f"{r['median_s'] / base:.2f}" if base and f != "clstm" else "–"
                    out.append(f"| {case} | {n} | {PRETTY[f]} ({r.get('how', '')}) | "
                               f"{r['median_s']:.3f} | {r['min_s']:.3f} | {rel} |")
        out.append("")
    if res["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return out


def write_chart(res, path):
    """Grouped bars of best-peer / clstm per config; returns a note if it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "ratios.png not drawn: matplotlib is not installed"
    threads, tasks = res["meta"]["threads"], res["meta"]["tasks"]
    cfgs = _configs(res)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    width = 0.8 / max(len(threads), 1)
    for ax, task in zip(axes[0], tasks):
        for k, n in enumerate(threads):
            vals, tg = [], []
            for cfg in cfgs:
                r = _ratio_entry(res, cfg, task, n) or {}
                vals.append(r.get("ratio", 0.0))
                tg.append(r.get("target"))
            xs = [i + (k - (len(threads) - 1) / 2) * width for i in range(len(cfgs))]
            bars = ax.bar(xs, vals, width, label=f"{n} thread{'s' if n > 1 else ''}")
            for x, v, t in zip(xs, vals, tg):
                if v:
                    ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
                if t:
                    ax.plot([x - width / 2, x + width / 2], [t, t], color="k", lw=1.5,
                            label="target" if (k == 0 and x == xs[0]) else None)
            del bars
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(cfgs)))
        ax.set_xticklabels(cfgs, rotation=20, fontsize=8)
        ax.set_title(f"{task}: best-peer time / clstm time")
        ax.set_ylabel("ratio (>1: clstm faster)")
        ax.legend(fontsize=8)
    if res["meta"].get("quick"):
        fig.suptitle("quick run (smoke test, not a measurement)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv):
    path = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    with open(path) as f:
        res = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(path))
    write_markdown(res, os.path.join(out_dir, "RESULTS.md"))
    if "meta" in res:
        write_chart(res, os.path.join(out_dir, "ratios.png"))
        print(headline(res))
    for name, cell_res in res.get("cells", {}).items():
        print(f"\n{CELLS[name].title}:\n{headline(cell_res)}")
        if CELLS[name].baseline:
            print(f"overhead over clstm's plain LSTM [goal]:\n{headline(cell_res, 'overhead')}")


if __name__ == "__main__":
    main(sys.argv[1:])
