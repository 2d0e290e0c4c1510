#!/usr/bin/python3
"""bench_attention's JSON -> a markdown table and PNG plots (Debian's python3-matplotlib).

    tools/report.py out/bench.json [more.json ...] [--peers out/peers.json] [--out-dir out/report]
                    [--command "the command that made the JSON"]
                    [--readme README.md --readme-plot bench/results/gflops_vs_L.png
                     --note "a sentence for the README section"]

Writes, under --out-dir:
  report.md          per op and case: naive ms, optimized ms per thread count, speedup, GFLOP/s
                     and fraction of the FP32 peak; with --peers, PyTorch's times beside ours
  gflops_vs_L.png    how much faster the optimized path is than the naive one, and how close
                     it comes to the peak: GFLOP/s against L for the (E, H) with the most
                     lengths measured (N = 1 self-attention), optimized at each thread count,
                     naive (1 thread; the lengths where it was skipped are marked), the
                     measured peaks, and the speedup over naive written at each point
  sweep.png          every N = 1 self-attention point of the optimized path at the most
                     threads: GFLOP/s against L per (E, H), against E and against H at L = 512
With --readme, rewrites the README's section between <!-- results:begin --> and
<!-- results:end --> from the same data (and copies the GFLOP/s plot to --readme-plot).

Times are medians over repetitions (computed here from every run in the JSON, or Google
Benchmark's median aggregate when only aggregates were written).
"""
import argparse
import collections
import json
import os
import re
import shutil
import statistics
import sys

GRID_ORDER = ["seed", "s128", "s512", "s2048", "bert", "s4096", "causal", "cross", "decode"]
UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
NAME = re.compile(r"^(?P<op>mha|sdpa)/(?P<path>naive|optimized)/(?P<case>[^/]+)/N:(?P<N>\d+)"
                  r"/Lq:(?P<Lq>\d+)/Lk:(?P<Lk>\d+)/E:(?P<E>\d+)/H:(?P<H>\d+)"
                  r"/threads:(?P<threads>\d+)(?:/isa:(?P<isa>[a-z0-9_]+))?")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COUNTERS = ("GFLOPS", "frac_peak", "bytes_per_second", "frac_read_bw", "rel_err", "peak_rss_MiB",
            "io_MiB", "rss_ratio")


class Result:
    """The median of one benchmark's runs, or why it has none."""

    def __init__(self, key):
        self.key = key
        self.ms = None
        self.counters = {}
        self.error = None


def load(paths):
    """{(op, path, case, N, Lq, Lk, E, H, threads): Result}, the first file's context, and
    {isa: {the same keys: Result}} for the ISAs other than the first of a run that put several
    side by side (bench_attention --isa=all: names ending in /isa:<name>)."""
    runs = collections.defaultdict(list)
    medians = {}
    errors = {}
    context = None
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        context = context or doc.get("context", {})
        for b in doc.get("benchmarks", []):
            m = NAME.match(b.get("run_name", b["name"]))
            if not m:
                continue
            g = m.groupdict()
            key = (g["op"], g["path"], g["case"]) + tuple(
                int(g[k]) for k in ("N", "Lq", "Lk", "E", "H", "threads")) + (g["isa"],)
            if b.get("error_occurred"):
                errors[key] = b.get("error_message", "error")
            elif b.get("run_type") == "aggregate":
                if b.get("aggregate_name") == "median":
                    medians[key] = b
            else:
                runs[key].append(b)
    results = {}
    for key in set(runs) | set(medians) | set(errors):
        r = results[key] = Result(key)
        if key in errors:
            r.error = errors[key]
            continue
        if runs.get(key):
            rs = runs[key]
            r.ms = statistics.median(x["real_time"] * UNIT_MS[x["time_unit"]] for x in rs)
            names = set().union(*(x.keys() for x in rs))
            for c in COUNTERS:
                if c in names:
                    r.counters[c] = statistics.median(x[c] for x in rs if c in x)
        else:
            b = medians[key]
            r.ms = b["real_time"] * UNIT_MS[b["time_unit"]]
            r.counters = {c: b[c] for c in COUNTERS if c in b}
    context = context or {}
    first = context.get("simdattn_isa")
    primary, others = {}, collections.defaultdict(dict)
    for key, r in results.items():
        r.key = key[:9]
        if key[9] is None or key[9] == first:
            primary[key[:9]] = r
        else:
            others[key[9]][key[:9]] = r
    return primary, context, dict(others)


def load_peers(path):
    """{(op, case, threads): {system: median_ms}} and the context, from peers_torch.py's JSON
    or CSV."""
    context = {}
    if path.endswith(".csv"):
        import csv
        with open(path) as f:
            rows = list(csv.DictReader(f))
    else:
        with open(path) as f:
            doc = json.load(f)
        rows, context = doc["rows"], doc.get("context", {})
    peers = collections.defaultdict(dict)
    for row in rows:
        peers[(row["op"], row["case"], int(row["threads"]))][row["system"]] = float(
            row["median_ms"])
    return peers, context


def case_order(case_key):
    op, case, n, lq, lk, e, h = case_key
    grid = GRID_ORDER.index(case) if case in GRID_ORDER else len(GRID_ORDER)
    return (op != "sdpa", grid, e, h, lq, n, lk)


def fmt_ms(ms):
    if ms is None:
        return "-"
    if ms < 0.1:
        return "%.4f" % ms
    if ms < 10:
        return "%.3f" % ms
    return "%.1f" % ms


def fmt_fraction(f):
    return "%.0f%%" % (100 * f) if f >= 0.1 else "%.1f%%" % (100 * f)


def fmt_error(message):
    if message.startswith("skipped"):
        m = re.search(r"about ([\d.]+) s", message)
        return "skipped (~%s s)" % m.group(1) if m else "skipped"
    return "**FAILED check**"


def build_rows(results):
    """One row per (op, case, shape): naive and each optimized thread count."""
    cases = collections.defaultdict(dict)
    for key, r in results.items():
        op, path, case, n, lq, lk, e, h, threads = key
        cases[(op, case, n, lq, lk, e, h)][(path, threads)] = r
    threads = sorted({k[8] for k in results if k[1] == "optimized"})
    return [(ck, cases[ck]) for ck in sorted(cases, key=case_order)], threads


def shape_text(n, lq, lk, e, h):
    lens = "L=%d" % lq if lq == lk else "Lq=%d Lk=%d" % (lq, lk)
    return ("N=%d " % n if n != 1 else "") + lens + " E=%d H=%d" % (e, h)


def markdown_table(rows, threads, peers=None, cases=None):
    top = max(threads) if threads else 1
    head = ["op", "case", "shape", "naive ms"]
    for t in threads:
        head.append("optimized ms, %d thr" % t)
    head.append("speedup (%d thr)" % top)
    low = min(threads) if threads else 1
    if top != low:
        head.append("scaling %d→%d thr" % (low, top))
    for t in threads:
        head += ["GFLOP/s, %d thr" % t, "of peak, %d thr" % t]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, case, n, lq, lk, e, h), by_path in rows:
        if cases is not None and case not in cases:
            continue
        naive = by_path.get(("naive", 1))
        cells = [op, case, shape_text(n, lq, lk, e, h)]
        cells.append(fmt_ms(naive.ms) if naive and naive.ms else
                     fmt_error(naive.error) if naive else "-")
        for t in threads:
            r = by_path.get(("optimized", t))
            cells.append(fmt_ms(r.ms) if r and r.ms else fmt_error(r.error) if r else "-")
        best = by_path.get(("optimized", top))
        cells.append("%.1fx" % (naive.ms / best.ms) if naive and naive.ms and best and best.ms
                     else "-")
        if top != low:
            one = by_path.get(("optimized", low))
            cells.append("%.2fx" % (one.ms / best.ms) if one and one.ms and best and best.ms
                         else "-")
        for t in threads:
            r = by_path.get(("optimized", t))
            ok = r and r.ms
            cells.append("%.1f" % r.counters["GFLOPS"] if ok else "-")
            cells.append(fmt_fraction(r.counters["frac_peak"]) if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def isa_table(rows, threads, context, other_isas):
    """One row per (op, case): naive, then each ISA's time, speedup and fraction of its peak."""
    top = max(threads)
    isas = [context.get("simdattn_isa", "?")] + sorted(other_isas)
    head = ["op", "case", "shape", "naive ms"]
    for isa in isas:
        head += ["%s ms" % isa, "%s speedup" % isa, "%s of peak" % isa]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, case, n, lq, lk, e, h), by_path in rows:
        naive = by_path.get(("naive", 1))
        cells = [op, case, shape_text(n, lq, lk, e, h),
                 fmt_ms(naive.ms) if naive and naive.ms else
                 fmt_error(naive.error) if naive else "-"]
        for i, isa in enumerate(isas):
            key = (op, "optimized", case, n, lq, lk, e, h, top)
            r = by_path.get(("optimized", top)) if i == 0 else other_isas[isa].get(key)
            ok = r is not None and r.ms
            cells.append(fmt_ms(r.ms) if ok else fmt_error(r.error) if r else "-")
            cells.append("%.1fx" % (naive.ms / r.ms) if ok and naive and naive.ms else "-")
            cells.append(fmt_fraction(r.counters["frac_peak"]) if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_table(rows, threads, peers):
    systems = sorted({s for v in peers.values() for s in v})
    head = ["op", "case", "threads", "simdattn ms"]
    for s in systems:
        head += ["%s ms" % s, "%s / simdattn" % s]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (op, case, n, lq, lk, e, h), by_path in rows:
        for t in threads:
            p = peers.get((op, case, t))
            r = by_path.get(("optimized", t))
            if not p or not r or not r.ms:
                continue
            cells = [op, case, str(t), fmt_ms(r.ms)]
            for s in systems:
                cells += [fmt_ms(p.get(s)), "%.1fx" % (p[s] / r.ms) if s in p else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def series(rows, path, threads):
    """{(op, E, H): [(L, Result)]} over N = 1 self-attention shapes without a causal mask."""
    out = collections.defaultdict(list)
    for (op, case, n, lq, lk, e, h), by_path in rows:
        r = by_path.get((path, threads))
        if n == 1 and lq == lk and case != "causal" and r and r.ms:
            out[(op, e, h)].append((lq, r))
    return {k: sorted(v, key=lambda x: x[0]) for k, v in out.items()}


def l_axis(ax, ls):
    """Log-2 L axis labelled with the lengths measured, not powers of two."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ls))
    ax.set_xticklabels([str(l) for l in sorted(ls)], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("sequence length L (Lq = Lk, N = 1)")


def skipped_lengths(rows, op, e, h):
    """L of the N = 1 self-attention shapes of (op, E, H) whose naive run was skipped, and the
    limit it gave (seconds per call), from its message."""
    ls, limit = [], None
    for (o, case, n, lq, lk, ee, hh), by_path in rows:
        r = by_path.get(("naive", 1))
        if (o, ee, hh) == (op, e, h) and n == 1 and lq == lk and case != "causal" and r and \
                r.error and r.error.startswith("skipped"):
            ls.append(lq)
            m = re.search(r"over the ([\d.]+) s limit", r.error)
            limit = m.group(1) if m else limit
    return sorted(set(ls)), limit


def main_pair(opt):
    """The (E, H) with the most lengths measured (both ops together); (512, 8), the grid's
    s512/s2048/causal shape, wins ties."""
    counts = collections.Counter()
    for (op, e, h), pts in opt.items():
        counts[(e, h)] += len(pts)
    return max(counts, key=lambda p: (counts[p], p == (512, 8), p[0])) if counts else None


# Further ISAs of a run that put several side by side, at the most threads.
ISA_STYLES = [dict(color="tab:purple", ls="-", marker="D", lw=1.6, ms=5),
              dict(color="tab:olive", ls="-", marker="v", lw=1.6, ms=5),
              dict(color="tab:brown", ls="-", marker="P", lw=1.6, ms=5)]


def plot_main(rows, threads, context, out_dir, plt, other_isas=None):
    """GFLOP/s against L for one (E, H): optimized at each thread count, naive, the peaks, and
    the speedup over naive written at each point. The question it answers: how much faster is
    the optimized path, and how close does it come to the machine's peak."""
    top = max(threads)
    by_threads = {t: series(rows, "optimized", t) for t in threads}
    naive = series(rows, "naive", 1)
    pair = main_pair(by_threads[top])
    if pair is None:
        return None
    e, h = pair
    isa = context.get("simdattn_isa", "?")
    peaks = {t: float(context["peak_gflops_%dt" % t]) for t in threads
             if "peak_gflops_%dt" % t in context}
    all_ls = {l for s in list(by_threads.values()) + [naive] for (o, ee, hh), pts in s.items()
              if (ee, hh) == pair for l, _ in pts}
    opt_style = {top: dict(color="tab:blue", ls="-", marker="o", lw=2.2, ms=6)}
    lighter = iter([dict(color="tab:cyan", ls="--", marker="s", lw=1.4, ms=4),
                    dict(color="tab:green", ls="--", marker="^", lw=1.4, ms=4)])
    for t in sorted(threads, reverse=True)[1:]:
        opt_style[t] = next(lighter, dict(color="gray", ls="--", marker=".", lw=1, ms=4))

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    notes = []
    for ax, op in zip(axes, ("sdpa", "mha")):
        for t in sorted(threads, reverse=True):
            pts = by_threads[t].get((op, e, h), [])
            if pts:
                ls, rs = zip(*pts)
                ax.plot(ls, [r.counters["GFLOPS"] for r in rs],
                        label="optimized (%s), %d thread%s" % (isa, t, "s" if t > 1 else ""),
                        **opt_style[t])
        for other, style in zip(sorted(other_isas or {}), ISA_STYLES):
            pts = series(build_rows(other_isas[other])[0], "optimized", top).get((op, e, h), [])
            if pts:
                ls, rs = zip(*pts)
                ax.plot(ls, [r.counters["GFLOPS"] for r in rs], label="optimized (%s), %d thread%s"
                        % (other, top, "s" if top > 1 else ""), **style)
        npts = naive.get((op, e, h), [])
        if npts:
            ls, rs = zip(*npts)
            ax.plot(ls, [r.counters["GFLOPS"] for r in rs], color="tab:red", ls=":",
                    marker="x", lw=1.6, ms=7, label="naive (reference), 1 thread")
        # The speedup at the largest thread count, above each optimized point that has a naive.
        naive_ms = {l: r.ms for l, r in npts}
        for l, r in by_threads[top].get((op, e, h), []):
            if l in naive_ms:
                ax.annotate("%.0fx" % (naive_ms[l] / r.ms) if naive_ms[l] / r.ms >= 10 else
                            "%.1fx" % (naive_ms[l] / r.ms), (l, r.counters["GFLOPS"]),
                            textcoords="offset points", xytext=(0, 8), ha="center",
                            fontsize=8, color="tab:blue", fontweight="bold")
        skipped, limit = skipped_lengths(rows, op, e, h)
        skipped = [l for l in skipped if l not in naive_ms]
        if skipped:
            notes.append("%s: naive not run at L = %s (over %s s per call, --naive_limit_s)"
                         % (op, ", ".join(map(str, skipped)), limit or "the"))
            for l in skipped:
                ax.annotate("naive skipped", (l, 0), xycoords=("data", "axes fraction"),
                            textcoords="offset points", xytext=(0, 4), ha="center",
                            va="bottom", rotation=90, fontsize=7, color="tab:red")
        for t, style in (("top", dict(color="black", ls="-.", lw=1.2)),
                         ("one", dict(color="gray", ls="-.", lw=1))):
            tt = top if t == "top" else min(threads)
            if tt in peaks and (t == "top" or tt != top):
                ax.axhline(peaks[tt], label="FP32 peak, %d thread%s (%s FMA loop)" % (
                    tt, "s" if tt > 1 else "", context.get("peak_isa", "?")), **style)
        l_axis(ax, all_ls)
        ax.set_yscale("log")
        ax.set_title({"sdpa": "sdpa: attention core", "mha": "mha: module forward"}[op]
                     + ", E=%d H=%d" % (e, h), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        if top in peaks and op == "mha":
            peak = peaks[top]
            sec = ax.secondary_yaxis("right", functions=(lambda g, p=peak: 100 * g / p,
                                                         lambda f, p=peak: f * p / 100))
            sec.set_ylabel("%% of the %d-thread peak" % top)
    axes[0].set_ylabel("GFLOP/s (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    for hnd, lab in zip(*axes[1].get_legend_handles_labels()):
        if lab not in labels:
            handles.append(hnd)
            labels.append(lab)
    commit = context.get("commit", "")
    fig.suptitle("simdattn%s on %s: optimized vs naive (N = 1 self-attention)"
                 % ("" if commit.startswith("not recorded") else " " + commit,
                    context.get("cpu_model", "?")), fontsize=11)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=3,
               fontsize=8, frameon=False)
    caption = ["Bold numbers: speedup of optimized at %d thread%s over naive. The naive path is "
               "single-threaded (it ignores Options::threads)." % (top, "s" if top > 1 else "")]
    caption += notes
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.04 + 0.03 * len(notes), 1, 0.88))
    path = os.path.join(out_dir, "gflops_vs_L.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_sweep(rows, threads, context, out_dir, plt):
    """Every N = 1 self-attention point of the optimized path at the most threads: GFLOP/s
    against L per (E, H), against E at L = 512 per H, against H at L = 512 per E."""
    top = max(threads)
    opt = series(rows, "optimized", top)
    if not opt:
        return None
    pairs = sorted({(e, h) for _, e, h in opt})
    cmap = plt.cm.tab10 if len(pairs) <= 10 else plt.cm.tab20
    colors = {p: cmap(i % cmap.N) for i, p in enumerate(pairs)}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharey=True)
    for row, op in zip(axes, ("sdpa", "mha")):
        ax = row[0]
        all_ls = set()
        for e, h in pairs:
            pts = opt.get((op, e, h), [])
            if pts:
                ls, rs = zip(*pts)
                all_ls.update(ls)
                ax.plot(ls, [r.counters["GFLOPS"] for r in rs], "o-", color=colors[(e, h)],
                        ms=4, label="E=%d H=%d" % (e, h))
        l_axis(ax, all_ls or {1})
        ax.set_title("%s: against L, per (E, H)" % op, fontsize=10)
        ax.legend(fontsize=6, ncol=2)
        at = {(e, h): r for (o, e, h), pts in opt.items() if o == op for l, r in pts if l == 512}
        for ax, x_of, line_of, xlabel, what in (
                (row[1], lambda p: p[0], lambda p: p[1], "embed size E (L = 512)", "H"),
                (row[2], lambda p: p[1], lambda p: p[0], "heads H (L = 512)", "E")):
            lines = collections.defaultdict(list)
            for p, r in at.items():
                lines[line_of(p)].append((x_of(p), r.counters["GFLOPS"]))
            for key in sorted(lines):
                pts = sorted(lines[key])
                ax.plot(*zip(*pts), "o-", ms=5, label="%s=%d" % (what, key))
            xs = sorted({x for pts in lines.values() for x, _ in pts})
            if xs:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs)
                ax.set_xticklabels([str(x) for x in xs], fontsize=8)
                ax.minorticks_off()
                ax.legend(fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_title("%s: against %s, per %s" % (op, xlabel.split(" (")[0], what), fontsize=10)
        for ax in row:
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.25)
            peak = context.get("peak_gflops_%dt" % top)
            if peak:
                ax.axhline(float(peak), color="black", ls="-.", lw=1)
        row[0].set_ylabel("GFLOP/s, %s at %d thread%s" % (context.get("simdattn_isa", "?"), top,
                                                          "s" if top > 1 else ""))
    fig.suptitle("Optimized path, every N = 1 self-attention point of the run (dash-dot: FP32 "
                 "peak at %d thread%s)" % (top, "s" if top > 1 else ""), fontsize=11)
    fig.tight_layout()
    path = os.path.join(out_dir, "sweep.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot(rows, threads, context, out_dir, other_isas=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [plot_main(rows, threads, context, out_dir, plt, other_isas),
             plot_sweep(rows, threads, context, out_dir, plt)]
    return [p for p in paths if p]


def header(context, command):
    peaks = ", ".join("%s thread%s %s GFLOP/s" % (k[12:-1], "s" if k[12:-1] != "1" else "", v)
                      for k, v in sorted(context.items()) if k.startswith("peak_gflops_"))
    lines = [
        "- date: %s" % context.get("date", "?")[:16].replace("T", " "),
        "- CPU: %s, %s CPUs (Google Benchmark reports %s MHz)" % (
            context.get("cpu_model", "?"), context.get("num_cpus", "?"),
            context.get("mhz_per_cpu", "?")),
        "- commit: `%s`; optimized path ISA: %s" % (context.get("commit", "?"),
                                                    context.get("simdattn_isa", "?")),
        "- FP32 peak measured at start-up (%s FMA loop): %s" % (context.get("peak_isa", "?"),
                                                              peaks),
    ]
    bandwidths = ", ".join("%s thread%s %s GB/s" % (k[10:-1], "s" if k[10:-1] != "1" else "", v)
                           for k, v in sorted(context.items()) if k.startswith("read_gbps_"))
    if bandwidths:
        lines.append("- memory read bandwidth measured at start-up (sum over %s MiB): %s"
                     % (context.get("read_buffer_mib", "256"), bandwidths))
    if command:
        lines.append("- command: `%s`" % command)
    load = context.get("load_avg")
    if load:
        lines.append("- load average when it started: %s (other work on the machine slows "
                     "the runs, the 2-thread ones most)" % ", ".join("%.1f" % x for x in load))
    return "\n".join(lines)


def extra_lines(results):
    """Decode bandwidth and the peak-memory run, which the table has no columns for."""
    lines = []
    for key, r in sorted(results.items()):
        if r.ms and "bytes_per_second" in r.counters:
            frac = r.counters.get("frac_read_bw")
            lines.append("- %s %s %s, %d thread%s: K and V read at %.1f GB/s%s (%s ms)"
                         % (key[0], key[1], key[2], key[8], "s" if key[8] > 1 else "",
                            r.counters["bytes_per_second"] * 1e-9,
                            " = %.0f%% of the measured read bandwidth" % (100 * frac)
                            if frac else "", fmt_ms(r.ms)))
    for key, r in sorted(results.items()):
        if key[2] == "memory" and r.ms:
            lines.append("- memory (sdpa N=%d L=%d E=%d H=%d, %d threads): peak resident %.0f MiB "
                         "= %.2fx the %.0f MiB of inputs plus output"
                         % (key[3], key[4], key[6], key[7], key[8], r.counters["peak_rss_MiB"],
                            r.counters["rss_ratio"], r.counters["io_MiB"]))
    return lines


def readme_section(rows, threads, context, command, plot_rel, note):
    return "\n".join([
        BEGIN,
        "",
        "Generated by `tools/run_bench.sh [options] --update-readme` (a `bench_attention` run, "
        "then `tools/report.py --readme`; the exact command is listed below): the numbers "
        "belong to the commit named below and change with it; rerun that command to refresh "
        "them. The grid cases of `bench/README.md` (which also gives the FLOP formulas) at 1 "
        "and 2 threads; times are medians in ms; \"of peak\" is the fraction of the FP32 FMA peak "
        "measured at start-up with the same thread count. The figure of every sweep point "
        "(`sweep.png`) is in `out/report/` after a run.",
        "",
        header(context, command),
        "",
    ] + ([note, ""] if note else []) + [
        markdown_table(rows, threads, cases=GRID_ORDER),
        "",
        "![GFLOP/s against L](%s)" % plot_rel,
        "",
        "Other runs (`build/release/bench/bench_attention --help` lists the sets, names and "
        "flags; arguments of `tools/run_bench.sh` go to it):",
        "",
        "- the grid cases with 0.2 s per measurement: "
        "`tools/run_bench.sh --set=grid`",
        "- the full E x H x L sweep (tens of minutes): `tools/run_bench.sh --set=sweep`",
        "- a subset by name: `tools/run_bench.sh --benchmark_filter='^sdpa/.*/(s2048|bert)/'`",
        "- a forced ISA: `tools/run_bench.sh --isa=avx2` (sets `SIMDATTN_ISA`); every ISA side "
        "by side: `tools/run_bench.sh --isa=all`",
        "- PyTorch's columns beside ours (needs `python3-torch`): `tools/run_bench.sh --peers`",
        "- the module's projection GEMMs alone, per ISA and thread count: "
        "`build/release/bench/bench_projections --isa=avx2,avx512` (bench/README.md, "
        "\"bench_projections\")",
        "- peak resident memory of sdpa at N=1, L=16384, E=512, H=8 against inputs plus output: "
        "`build/release/bench/bench_attention --set=memory` (counters `peak_rss_MiB`, "
        "`rss_ratio`), or the same under `/usr/bin/time -v` (\"Maximum resident set size\")",
        "",
        END,
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="bench_attention --benchmark_out files")
    parser.add_argument("--peers", help="tools/peers_torch.py's JSON or CSV")
    parser.add_argument("--out-dir", default="out/report")
    parser.add_argument("--command", default="",
                        help="the command that produced the JSON, quoted in the report")
    parser.add_argument("--readme", help="README.md whose results section to rewrite")
    parser.add_argument("--readme-plot", default="bench/results/gflops_vs_L.png",
                        help="where the README's plot is copied, relative to the README")
    parser.add_argument("--note", default="",
                        help="a sentence for the README section, e.g. why the figures are provisional")
    args = parser.parse_args()

    results, context, other_isas = load(args.json)
    if not results:
        sys.exit("report.py: no bench_attention results in %s" % ", ".join(args.json))
    # The run's own record (run_bench.sh passes it); the checkout now may hold other code.
    context.setdefault("commit", "not recorded (--benchmark_context=commit=...)")
    rows, threads = build_rows(results)
    os.makedirs(args.out_dir, exist_ok=True)

    parts = ["# bench_attention results", "", header(context, args.command)]
    parts += extra_lines(results)
    parts += ["", "Times are medians in ms; \"of peak\" is the fraction of the FP32 FMA peak "
              "measured at start-up with the same thread count. Naive runs single-threaded.", "",
              markdown_table(rows, threads), ""]
    if other_isas:
        parts += ["## ISAs side by side", "",
                  "The optimized path on each ISA, at the most threads; \"of peak\" is the "
                  "fraction of that ISA's own FMA peak.", "",
                  isa_table(rows, threads, context, other_isas), ""]
    if args.peers:
        if os.path.exists(args.peers):
            peers, peer_context = load_peers(args.peers)
            note = "PyTorch %s, BLAS %s, %s." % (peer_context.get("torch_version", "?"),
                                               peer_context.get("blas", "?"),
                                               peer_context.get("date", "?"))
            if "blas/libblas" in peer_context.get("blas", ""):
                note += (" That is Debian's reference BLAS: PyTorch's GEMMs run unoptimized "
                         "(apt-get install libopenblas0-pthread for representative figures).")
            parts += ["## PyTorch on the same machine", "", note,
                      "A ratio above 1 means simdattn's optimized path is that much faster.", "",
                      peers_table(rows, threads, peers), ""]
        else:
            print("report.py: no peers file %s (run tools/peers_torch.py)" % args.peers)
    pngs = plot(rows, threads, context, args.out_dir, other_isas) if threads else []
    parts += ["![%s](%s)" % (os.path.basename(p), os.path.basename(p)) for p in pngs]
    table_path = os.path.join(args.out_dir, "report.md")
    with open(table_path, "w") as f:
        f.write("\n".join(parts) + "\n")
    print("report.py: table in %s" % table_path)
    for p in pngs:
        print("report.py: plot in %s" % p)

    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        if BEGIN not in text or END not in text:
            sys.exit("report.py: %s lacks the %s ... %s markers" % (args.readme, BEGIN, END))
        plot_dst = os.path.join(os.path.dirname(os.path.abspath(args.readme)), args.readme_plot)
        os.makedirs(os.path.dirname(plot_dst), exist_ok=True)
        shutil.copyfile(pngs[0], plot_dst)
        section = readme_section(rows, threads, context, args.command, args.readme_plot,
                                 args.note)
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        with open(args.readme, "w") as f:
            f.write(text[:start] + section + text[stop:])
        print("report.py: results section of %s rewritten, plot in %s" % (args.readme, plot_dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
