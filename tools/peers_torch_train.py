#!/usr/bin/python3
"""PyTorch's CPU autograd on training steps, for bench_attention's `train` set to compare against.

Times, with torch.set_num_threads(t) for each thread count, forward + backward of
  sdpa_train   the tutorial's attention core on [N, L, H, D] tensors that require gradients
               (einsum scores, masked_fill(mask == 0, -1e20) when causal, softmax, einsum), then
               out.backward(d_out): dQ, dK, dV;
  mha_train    a module written like the tutorial's SelfAttention (three E -> E projections
               without bias, the same core, fc_out with bias) in training mode, on a query that
               requires gradients (self-attention: one tensor for values, keys and query), then
               out.backward(d_out): the input's and every parameter's gradient;
and the backward alone of each (forward outside the timed region, backward with
retain_graph=True). PyTorch 1.13 has no fused attention: its autograd keeps the [N, H, L, L]
probabilities, which is what it is measured with here. Timing as tools/peers_torch.py: two
warm-up calls, then the median over --repetitions measurements of at least --min-time seconds.

FLOPs use bench_attention's counts so the GFLOP/s columns compare: the core's forward is
4 N Lq Lk E (halved when causal), its backward 2.5 times that (FlashAttention-2's count: five
products to the forward's two); the module adds 8 N L E^2 forward and 16 N L E^2 backward
(each projection's input and weight gradients).

Writes one line per measurement and, with --out, JSON. Without torch it says how to install it
and exits with status 3.
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers_torch import median_ms, tutorial_modules  # noqa: E402  (the same module and core)

# name, N, L, E, H, causal: bench_attention's grid shapes s2048 and bert, which its train set
# times, and causal s2048, which it does not (a peer figure for the causal backward).
CASES = [
    ("s2048", 1, 2048, 512, 8, False),
    ("bert", 4, 512, 768, 12, False),
    ("causal", 1, 2048, 512, 8, True),
]


def sdpa_flops(n, l, e, causal):
    f = 4.0 * n * l * l * e
    return f / 2 if causal else f


def train_flops(op, part, n, l, e, causal):
    """FLOPs of `part` ("step": forward + backward, "backward") of op (sdpa_train, mha_train)."""
    core = sdpa_flops(n, l, e, causal)
    forward, backward = core, 2.5 * core
    if op == "mha_train":
        forward += 8.0 * n * l * e * e
        backward += 16.0 * n * l * e * e
    return backward if part == "backward" else forward + backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON to write (default: none)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="comma-separated cases (default: %(default)s)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per measurement at least (default 0.2)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("peers_torch_train.py: PyTorch is not installed for " + sys.executable + ".\n"
              "Install Debian's package, then run this again:\n"
              "    sudo apt-get install python3-torch", file=sys.stderr)
        return 3

    TutorialSelfAttention, attention_core = tutorial_modules(torch)

    def timed_ms(call):
        call()
        call()  # two warm-ups
        return median_ms(call, args.repetitions, args.min_time)[0]

    threads = [int(t) for t in args.threads.split(",")]
    wanted = args.cases.split(",")
    rows = []
    torch.manual_seed(0)
    for name, n, l, e, h, causal in CASES:
        if name not in wanted:
            continue
        d = e // h
        tril = torch.tril(torch.ones(l, l)).reshape(1, 1, l, l) if causal else None
        q4, k4, v4 = (torch.randn(n, l, h, d, requires_grad=True) for _ in range(3))
        d_out4 = torch.randn(n, l, h, d)
        x = torch.randn(n, l, e, requires_grad=True)
        d_out = torch.randn(n, l, e)
        module = TutorialSelfAttention(e, h).train()
        leaves = {"sdpa_train": [q4, k4, v4], "mha_train": [x] + list(module.parameters())}

        def clear(op):
            for t in leaves[op]:
                t.grad = None

        def sdpa_step():
            clear("sdpa_train")
            attention_core(q4, k4, v4, tril, 1.0 / d ** 0.5).backward(d_out4)

        def mha_step():
            clear("mha_train")
            module(x, x, x, tril).backward(d_out)

        for t in threads:
            torch.set_num_threads(t)
            for op, step, forward in (
                    ("sdpa_train", sdpa_step, lambda: attention_core(q4, k4, v4, tril, 1.0 / d ** 0.5)),
                    ("mha_train", mha_step, lambda: module(x, x, x, tril))):
                grad = d_out4 if op == "sdpa_train" else d_out
                out = forward()
                timings = {
                    "step": timed_ms(step),
                    "backward": timed_ms(lambda: (clear(op), out.backward(grad, retain_graph=True))),
                }
                del out
                for part, ms in timings.items():
                    gflops = train_flops(op, part, n, l, e, causal) / (ms * 1e-3) * 1e-9
                    rows.append(dict(system="torch_tutorial", op=op, part=part, case=name, N=n,
                                     L=l, E=e, H=h, causal=int(causal), threads=t,
                                     median_ms=round(ms, 3), gflops=round(gflops, 2)))
                    print("torch %s %-10s %-8s %-6s threads %d  %9.2f ms  %6.1f GFLOP/s"
                          % (torch.__version__, op, part, name, t, ms, gflops), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        context = dict(torch_version=torch.__version__, python=sys.version.split()[0],
                       date=datetime.datetime.now().isoformat(timespec="seconds"),
                       repetitions=args.repetitions, min_time_s=args.min_time)
        with open(args.out, "w") as f:
            json.dump(dict(context=context, rows=rows), f, indent=1)
        print("peers_torch_train.py: wrote " + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
