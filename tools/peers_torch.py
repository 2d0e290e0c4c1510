#!/usr/bin/python3
"""PyTorch on bench_attention's grid cases on this machine, for tools/report.py to compare.

Runs each grid case of bench/README.md (copied below) through
  torch_mha       torch.nn.MultiheadAttention(E, H, batch_first=True) in eval and inference
                  mode with need_weights=False (op mha; PyTorch's own module, with its fast path
                  where it applies);
  torch_tutorial  a module written like the tutorial's SelfAttention: three E->E projections
                  without bias, einsum scores, masked_fill(mask == 0, -1e20), softmax, einsum,
                  fc_out with bias (op mha), and its attention core alone on [N, L, H, D]
                  tensors (op sdpa; PyTorch 1.13 has no fused scaled_dot_product_attention);
with torch.set_num_threads(t) for each thread count. Timing follows bench_attention (bench/README.md):
two warm-up calls, then the median over --repetitions measurements, each a loop of calls lasting
at least --min-time seconds. FLOPs use bench/README.md's formulas, as bench_attention does.

Writes JSON (a list of rows plus the context) and CSV with the columns
    system,op,case,N,Lq,Lk,E,H,causal,threads,median_ms,gflops
This is PyTorch out of the box: its best figures on this kind of machine need glibc malloc
tunables and an OpenBLAS allowed to use AVX-512.

Without torch it says how to install it and exits with status 3.
"""
import argparse
import csv
import datetime
import json
import os
import statistics
import sys
import time

# bench/README.md's grid: name, N, Lq, Lk, E, H, causal.
GRID = [
    ("seed", 1, 2, 2, 256, 8, False),
    ("s128", 1, 128, 128, 256, 8, False),
    ("s512", 1, 512, 512, 512, 8, False),
    ("s2048", 1, 2048, 2048, 512, 8, False),
    ("bert", 4, 512, 512, 768, 12, False),
    ("s4096", 1, 4096, 4096, 1024, 16, False),
    ("causal", 1, 2048, 2048, 512, 8, True),
    ("cross", 2, 256, 1024, 512, 8, False),
    ("decode", 1, 1, 4096, 1024, 16, False),
]
COLUMNS = ["system", "op", "case", "N", "Lq", "Lk", "E", "H", "causal", "threads", "median_ms",
           "gflops"]


def flops(op, n, lq, lk, e, causal):
    """bench/README.md: sdpa = 4 N Lq Lk E (halved when causal); mha adds the four projections."""
    f = 4.0 * n * lq * lk * e
    if causal:
        f /= 2
    if op == "mha":
        f += 2.0 * n * lq * e * e * 2 + 2.0 * n * lk * e * e * 2
    return f


def blas_library():
    """The file behind Debian's libblas.so.3 alternative, which Debian's torch calls."""
    for path in ("/usr/lib/x86_64-linux-gnu/libblas.so.3", "/usr/lib/aarch64-linux-gnu/libblas.so.3"):
        if os.path.exists(path):
            return os.path.realpath(path)
    return "unknown"


def median_ms(call, repetitions, min_time):
    """Median over `repetitions` measurements of the mean ms per call, each measurement calling
    until at least `min_time` seconds have passed; returns (median, measurements)."""
    medians = []
    for _ in range(repetitions):
        calls, t0 = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        medians.append(elapsed / calls * 1e3)
    return statistics.median(medians), len(medians)


def tutorial_modules(torch):
    """The tutorial's SelfAttention module class and its attention core, on the caller's torch
    (imported there, so that a missing torch is reported as such)."""

    class TutorialSelfAttention(torch.nn.Module):
        """The tutorial's SelfAttention, with E -> E projections as in simdattn's DESIGN.md."""

        def __init__(self, embed_size, heads):
            super().__init__()
            self.embed_size, self.heads = embed_size, heads
            self.head_dim = embed_size // heads
            self.values = torch.nn.Linear(embed_size, embed_size, bias=False)
            self.keys = torch.nn.Linear(embed_size, embed_size, bias=False)
            self.queries = torch.nn.Linear(embed_size, embed_size, bias=False)
            self.fc_out = torch.nn.Linear(embed_size, embed_size)

        def forward(self, values, keys, query, mask):
            n, lq, lk = query.shape[0], query.shape[1], keys.shape[1]
            v = self.values(values).reshape(n, lk, self.heads, self.head_dim)
            k = self.keys(keys).reshape(n, lk, self.heads, self.head_dim)
            q = self.queries(query).reshape(n, lq, self.heads, self.head_dim)
            out = attention_core(q, k, v, mask, 1.0 / self.head_dim ** 0.5)
            return self.fc_out(out.reshape(n, lq, self.embed_size))

    def attention_core(q, k, v, mask, scale):
        energy = torch.einsum("nqhd,nkhd->nhqk", [q, k])
        if mask is not None:
            energy = energy.masked_fill(mask == 0, float("-1e20"))
        attention = torch.softmax(energy * scale, dim=3)
        return torch.einsum("nhql,nlhd->nqhd", [attention, v])

    return TutorialSelfAttention, attention_core


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/peers.json",
                        help="JSON to write; the CSV goes beside it (default out/peers.json)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--cases", default=",".join(c[0] for c in GRID),
                        help="comma-separated GRID cases (default: all nine)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per measurement at least (default 0.2)")
    parser.add_argument("--slow-call", type=float, default=1.0,
                        help="a case whose first call takes longer than this many seconds is "
                             "timed by one more call only (default 1.0)")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print("peers_torch.py: PyTorch is not installed for " + sys.executable + ".\n"
              "Install Debian's package, then run this again:\n"
              "    sudo apt-get install python3-torch", file=sys.stderr)
        return 3

    threads = [int(t) for t in args.threads.split(",")]
    wanted = args.cases.split(",")
    unknown = [c for c in wanted if c not in [g[0] for g in GRID]]
    if unknown:
        parser.error("unknown case(s) %s; GRID cases: %s" % (unknown, [g[0] for g in GRID]))

    TutorialSelfAttention, attention_core = tutorial_modules(torch)

    def time_ms(call):
        """(median ms per call, measurements taken)."""
        t0 = time.perf_counter()
        call()
        if time.perf_counter() - t0 > args.slow_call:
            # Minutes per case otherwise (Debian's reference BLAS makes mha decode ~10 s a call).
            t0 = time.perf_counter()
            call()
            return (time.perf_counter() - t0) * 1e3, 1
        call()  # the second warm-up
        return median_ms(call, args.repetitions, args.min_time)

    blas = blas_library()
    if "openblas" not in blas and "mkl" not in blas:
        print("peers_torch.py: PyTorch's BLAS here is %s, the slow reference BLAS; its figures "
              "say little about PyTorch. For OpenBLAS: sudo apt-get install libopenblas0-pthread"
              % blas, file=sys.stderr)
    rows = []
    torch.manual_seed(0)
    for name, n, lq, lk, e, h, causal in GRID:
        if name not in wanted:
            continue
        d = e // h
        query = torch.randn(n, lq, e)
        kv = query if lq == lk and name != "cross" else torch.randn(n, lk, e)
        q4, k4, v4 = (torch.randn(n, lq, h, d), torch.randn(n, lk, h, d),
                      torch.randn(n, lk, h, d))
        tril = torch.tril(torch.ones(lq, lk)).reshape(1, 1, lq, lk) if causal else None
        blocked = torch.triu(torch.ones(lq, lk, dtype=torch.bool), 1) if causal else None
        mha = torch.nn.MultiheadAttention(e, h, batch_first=True).eval()
        tutorial = TutorialSelfAttention(e, h).eval()
        calls = {
            ("torch_mha", "mha"): lambda: mha(query, kv, kv, attn_mask=blocked,
                                              need_weights=False),
            ("torch_tutorial", "mha"): lambda: tutorial(kv, kv, query, tril),
            ("torch_tutorial", "sdpa"): lambda: attention_core(q4, k4, v4, tril, 1.0 / d ** 0.5),
        }
        for t in threads:
            torch.set_num_threads(t)
            for (system, op), call in calls.items():
                with torch.inference_mode():
                    ms, measurements = time_ms(call)
                gflops = flops(op, n, lq, lk, e, causal) / (ms * 1e-3) * 1e-9
                row = dict(system=system, op=op, case=name, N=n, Lq=lq, Lk=lk, E=e, H=h,
                           causal=int(causal), threads=t, median_ms=round(ms, 6),
                           gflops=round(gflops, 3))
                rows.append(dict(row, measurements=measurements))
                print("%-15s %-4s %-7s threads %d  %10.3f ms  %7.1f GFLOP/s"
                      % (system, op, name, t, ms, gflops), flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    context = dict(torch_version=torch.__version__, python=sys.version.split()[0], blas=blas,
                   date=datetime.datetime.now().isoformat(timespec="seconds"),
                   repetitions=args.repetitions, min_time_s=args.min_time)
    with open(args.out, "w") as f:
        json.dump(dict(context=context, rows=rows), f, indent=1)
    csv_path = os.path.splitext(args.out)[0] + ".csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print("peers_torch.py: wrote %s and %s" % (args.out, csv_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
