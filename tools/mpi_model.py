#!/usr/bin/env python3
"""The schedule model of simdattn::mpi (docs/sequence_parallel.md): per-step compute and
transfer times of the ring, the link bandwidth that hides the transfers, and the predicted
efficiency at P ranks for given links; also the Ulysses all-to-all for comparison.

    tools/mpi_model.py                          # the tables of docs/sequence_parallel.md
    tools/mpi_model.py --check --rate 132 --link 7.0 --l 4096 --e 1024 --ranks 2 4 --cores 2

Ring, per rank and step (P steps; the transfer of step t + 1's slice overlaps step t):
    compute   F = 4 (L/P)^2 E FLOPs            (causal with the zig-zag layout: half)
    transfer  B = 2 (L/P) E_kv 4 bytes         (K and V, float32)
    t_c = F / R,  t_m = alpha + B / W          (R: FLOP/s of a rank, W: link bytes/s)
    call      T = (P - 1) max(t_c, t_m) + t_c
    efficiency  P t_c / T;  the transfers hide when W >= B / t_c = 2 R P E_kv / (L E)
Ulysses: two all-to-alls move (P-1)/P of the rank's Q, K, V, then its output, not overlapped:
    T = 4 (L/P) E 4 (P-1)/P / W + 4 L^2 E / P / R  (MHA; causal halves the compute)
"""
import argparse


def ring(l, e, p, rate, link, alpha=5e-6, causal=False, e_kv=None):
    e_kv = e if e_kv is None else e_kv
    flops = 4.0 * (l / p) ** 2 * e * (0.5 if causal else 1.0)
    nbytes = 2.0 * (l / p) * e_kv * 4
    t_c = flops / rate
    t_m = alpha + nbytes / link
    total = (p - 1) * max(t_c, t_m) + t_c
    return {"t_c": t_c, "t_m": t_m, "bytes": nbytes, "eff": p * t_c / total,
            "need": nbytes / t_c}


def ulysses(l, e, p, rate, link, alpha=5e-6, causal=False):
    compute = 4.0 * l * l * e / p * (0.5 if causal else 1.0) / rate
    exchange = 2 * (alpha * (p - 1) + 4 * (l / p) * e * 4 * (p - 1) / p / 2 / link)
    return {"eff": compute / (compute + exchange)}


def tables(rate_gflops, e, h):
    rate = rate_gflops * 1e9
    links = [10, 25, 100]  # Gbit/s
    ps = [8, 16, 32, 64, 128, 256, 512, 1024]  # the ranks
    for l in (131072, 1048576):
        print(f"\nL = {l}, E = {e}, H = {h}, a rank computes at {rate_gflops:g} GFLOP/s: ring "
              "efficiency non-causal / causal zig-zag [Ulysses, where H is a multiple of P]")
        print("| P | L/P | t_c per step | bytes per step | link to hide it, non-causal / causal | "
              + " | ".join(f"{g} Gbit/s" for g in links) + " |")
        print("|---|---|---|---|---|" + "---|" * len(links))
        for p in ps:
            r = ring(l, e, p, rate, 1e9)
            cells = []
            for g in links:
                w = g * 1e9 / 8
                a = ring(l, e, p, rate, w)["eff"]
                c = ring(l, e, p, rate, w, causal=True)["eff"]
                u = f" [{ulysses(l, e, p, rate, w)['eff']:.0%}]" if h % p == 0 else ""
                cells.append(f"{a:.0%} / {c:.0%}{u}")
            need = r["need"] * 8 / 1e9
            print(f"| {p} | {l // p} | {r['t_c'] * 1e3:.3g} ms | {r['bytes'] / 1e6:.3g} MB | "
                  f"{need:.3g} / {2 * need:.3g} Gbit/s | " + " | ".join(cells) + " |")


def check(rate_gflops, link_gbytes, l, e, ranks, cores, causal):
    """Per-step predictions for P ranks sharing `cores` cores of one machine."""
    for p in ranks:
        share = min(1.0, cores / p)  # a rank's share of a core when oversubscribed
        r = ring(l, e, p, rate_gflops * 1e9 * share, link_gbytes * 1e9, causal=causal)
        print(f"P={p}: step compute {r['t_c'] * 1e3:.2f} ms (at {rate_gflops * share:.1f} "
              f"GFLOP/s per rank), {r['bytes'] / 1e6:.2f} MB per step, transfer "
              f"{r['t_m'] * 1e3:.3f} ms alone, call {((p - 1) * max(r['t_c'], r['t_m']) + r['t_c']) * 1e3:.1f} ms, "
              f"efficiency {r['eff']:.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=5000.0,
                    help="GFLOP/s of one rank (default 5000: a node of ~32 AVX-512 cores)")
    ap.add_argument("--e", type=int, default=1024)
    ap.add_argument("--h", type=int, default=16, help="heads (Ulysses needs a multiple of P)")
    ap.add_argument("--check", action="store_true",
                    help="per-step predictions for a run on one machine instead of the tables")
    ap.add_argument("--link", type=float, default=8.0, help="--check: link GB/s (bench_mpi)")
    ap.add_argument("--l", type=int, default=4096, help="--check: sequence length")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4], help="--check: P values")
    ap.add_argument("--cores", type=int, default=2, help="--check: cores the ranks share")
    ap.add_argument("--causal", action="store_true", help="--check: causal, zig-zag")
    a = ap.parse_args()
    if a.check:
        check(a.rate, a.link, a.l, a.e, a.ranks, a.cores, a.causal)
    else:
        tables(a.rate, a.e, a.h)


if __name__ == "__main__":
    main()
