#!/usr/bin/python3
"""bench_attention's JSON -> a markdown table and PNG plots (Debian's python3-matplotlib).

    tools/report.py out/bench.json [more.json ...] [--peers out/peers.json] [--out-dir out/report]
                    [--readme README.md --readme-plot bench/results/gflops_vs_L.png]

Writes, under --out-dir:
  report.md          per op and case: naive ms, optimized ms per thread count, speedup, GFLOP/s
                     and fraction of the FP32 peak; with --peers, PyTorch's times beside ours
  gflops_vs_L.png    GFLOP/s against L for each (E, H) at N = 1, self-attention: optimized
                     (at the most threads) and naive, with the measured peak
  speedup_vs_L.png   optimized (most threads) over naive, against L, for each (E, H)
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
                  r"/threads:(?P<threads>\d+)")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COUNTERS = ("GFLOPS", "frac_peak", "bytes_per_second", "rel_err", "peak_rss_MiB", "io_MiB",
            "rss_ratio")


class Result:
    """The median of one benchmark's runs, or why it has none."""

    def __init__(self, key):
        self.key = key
        self.ms = None
        self.counters = {}
        self.error = None


def load(paths):
    """{(op, path, case, N, Lq, Lk, E, H, threads): Result} and the first file's context."""
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
                int(g[k]) for k in ("N", "Lq", "Lk", "E", "H", "threads"))
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
    return results, context or {}


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


def plot(rows, threads, context, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(threads)
    opt = series(rows, "optimized", top)
    naive = series(rows, "naive", 1)
    pairs = sorted({(e, h) for _, e, h in opt})
    all_ls = {l for v in list(opt.values()) + list(naive.values()) for l, _ in v}
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(pairs)}
    isa = context.get("simdattn_isa", "?")
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, op in zip(axes, ("sdpa", "mha")):
        for e, h in pairs:
            if (op, e, h) in opt:
                ls, rs = zip(*opt[(op, e, h)])
                ax.plot(ls, [r.counters["GFLOPS"] for r in rs], "o-", color=colors[(e, h)],
                        label="optimized, E=%d H=%d" % (e, h))
            if (op, e, h) in naive:
                ls, rs = zip(*naive[(op, e, h)])
                ax.plot(ls, [r.counters["GFLOPS"] for r in rs], "x--", color=colors[(e, h)],
                        alpha=0.6, label="naive, E=%d H=%d" % (e, h))
        peak = context.get("peak_gflops_%dt" % top)
        if peak:
            ax.axhline(float(peak), color="gray", ls=":",
                       label="FP32 peak, %d threads (%s)" % (top, context.get("peak_isa", "")))
        l_axis(ax, all_ls)
        ax.set_yscale("log")
        ax.set_title("%s: optimized (%s, %d threads) vs naive" % (op, isa, top))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GFLOP/s (FLOP counts: bench/README.md)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    paths.append(os.path.join(out_dir, "gflops_vs_L.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, op in zip(axes, ("sdpa", "mha")):
        for e, h in pairs:
            if (op, e, h) not in opt or (op, e, h) not in naive:
                continue
            naive_ms = {l: r.ms for l, r in naive[(op, e, h)]}
            pts = [(l, naive_ms[l] / r.ms) for l, r in opt[(op, e, h)] if l in naive_ms]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[(e, h)], label="E=%d H=%d" % (e, h))
        ax.axhline(1.0, color="gray", ls=":", label="as fast as naive")
        l_axis(ax, all_ls)
        ax.set_yscale("log")
        ax.set_title("%s: naive time / optimized time (%d threads)" % (op, top))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="naive skipped where > 2 s per call", title_fontsize=7)
    axes[0].set_ylabel("speedup over naive (x)")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "speedup_vs_L.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


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
            lines.append("- %s %s %s, %d thread%s: K and V read at %.1f GB/s (%s ms)"
                         % (key[0], key[1], key[2], key[8], "s" if key[8] > 1 else "",
                            r.counters["bytes_per_second"] * 1e-9, fmt_ms(r.ms)))
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
        "measured at start-up with the same thread count. The sweep points and the speedup plot "
        "are in `out/report/` after a run.",
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
        "- a forced ISA: `tools/run_bench.sh --isa=avx2` (sets `SIMDATTN_ISA`)",
        "- PyTorch's columns beside ours (needs `python3-torch`): `tools/run_bench.sh --peers`",
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

    results, context = load(args.json)
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
    pngs = plot(rows, threads, context, args.out_dir) if threads else []
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
