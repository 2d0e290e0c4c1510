// bench_mpi: times simdattn::mpi::scaled_dot_product_attention under mpirun (Google Benchmark
// does not fit a program that every rank runs), with the figures the schedule's model needs:
// per-step compute and wait times, bytes per step and the link's bandwidth for one step's bytes.
//
//   mpirun -np 2 build/release/bench/bench_mpi --l=4096 --e=1024 --h=16 --threads=1
//   mpirun -np 1 --bind-to none build/release/bench/bench_mpi --l=4096 --threads=2 --baseline
//
// FLOPs per call: 4 N Lq Lk E (halved when causal), as bench_attention counts them
// (bench/README.md). Times are medians over --reps calls after --warmup calls; a call's time is
// the slowest rank's. Rank 0 prints; see bench/README.md ("bench_mpi") and
// docs/sequence_parallel.md for what the figures mean.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "simdattn/attention.hpp"
#include "simdattn/dispatch.hpp"
#include "simdattn/mpi.hpp"
#include "simdattn/types.hpp"

namespace {

using simdattn::mpi::Layout;
using simdattn::mpi::Schedule;

struct Config {
  std::size_t n = 1, l = 4096, lk = 0, e = 1024, h = 16, hkv = 0;
  bool causal = false, baseline = false, link = true;
  Layout layout = Layout::contiguous;
  Schedule schedule = Schedule::automatic;
  int threads = 1, reps = 5, warmup = 1;
};

constexpr char kUsage[] =
    "usage: mpirun -np P bench_mpi [--n=1] [--l=4096] [--lk=L] [--e=1024] [--h=16]\n"
    "  [--hkv=H] [--causal] [--layout=contiguous|zigzag]\n"
    "  [--schedule=automatic|ring|ulysses] [--threads=1] [--reps=5] [--warmup=1]\n"
    "  [--baseline] [--no-link]\n"
    "--baseline (1 rank): time simdattn::scaled_dot_product_attention, the one-process\n"
    "call, which is what simdattn::mpi runs at P = 1\n";

[[noreturn]] void usage(const char* bad) {
  std::fprintf(stderr, "bench_mpi: unknown or malformed argument '%s'\n%s", bad, kUsage);
  MPI_Abort(MPI_COMM_WORLD, 2);
  std::exit(2);
}

// --help: the usage once (rank 0), and every rank leaves normally.
[[noreturn]] void help() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) std::fputs(kUsage, stdout);
  MPI_Finalize();
  std::exit(0);
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string key = a.substr(0, eq),
                      value = eq == std::string::npos ? "" : a.substr(eq + 1);
    auto number = [&](bool zero_allowed = false) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || (v == 0 && !zero_allowed)) usage(argv[i]);
      return static_cast<std::size_t>(v);
    };
    if (key == "--n")
      c.n = number();
    else if (key == "--l")
      c.l = number();
    else if (key == "--lk")
      c.lk = number();
    else if (key == "--e")
      c.e = number();
    else if (key == "--h")
      c.h = number();
    else if (key == "--hkv")
      c.hkv = number();
    else if (key == "--threads")
      c.threads = static_cast<int>(number());
    else if (key == "--reps")
      c.reps = static_cast<int>(number());
    else if (key == "--warmup")
      c.warmup = static_cast<int>(number(true));
    else if (a == "--causal")
      c.causal = true;
    else if (a == "--baseline")
      c.baseline = true;
    else if (a == "--no-link")
      c.link = false;
    else if (a == "--layout=contiguous")
      c.layout = Layout::contiguous;
    else if (a == "--layout=zigzag")
      c.layout = Layout::zigzag;
    else if (a == "--schedule=automatic")
      c.schedule = Schedule::automatic;
    else if (a == "--schedule=ring")
      c.schedule = Schedule::ring;
    else if (a == "--schedule=ulysses")
      c.schedule = Schedule::ulysses;
    else if (a == "--help" || a == "-h")
      help();
    else
      usage(argv[i]);
  }
  if (c.lk == 0) c.lk = c.l;
  if (c.hkv == 0) c.hkv = c.h;
  if (c.e % c.h != 0 || c.h % c.hkv != 0) usage("--e/--h/--hkv (H must divide E, H_kv divide H)");
  return c;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Deterministic, non-degenerate inputs (normal-ish), different on every rank.
std::vector<float> inputs(std::size_t count, unsigned seed) {
  std::vector<float> x(count);
  std::uint64_t s = 0x9E3779B97F4A7C15ull * (seed + 1);
  for (float& v : x) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 - 0.5) * 3.4f;
  }
  return x;
}

double max_over_ranks(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int p = 0, r = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  const Config c = parse(argc, argv);
  const std::size_t d = c.e / c.h;
  auto rows = [&](std::size_t total) {
    std::size_t l = 0;
    for (const auto& s : simdattn::mpi::even_split(c.layout, total, p, r)) l += s.length;
    return l;
  };
  const std::size_t lq = rows(c.l), lk = rows(c.lk);
  const auto q = inputs(c.n * lq * c.h * d, 3 * static_cast<unsigned>(r));
  const auto k = inputs(c.n * lk * c.hkv * d, 3 * static_cast<unsigned>(r) + 1);
  const auto v = inputs(c.n * lk * c.hkv * d, 3 * static_cast<unsigned>(r) + 2);
  std::vector<float> out(c.n * lq * c.h * d);

  simdattn::mpi::Options options;
  options.threads = c.threads;
  options.causal = c.causal ? simdattn::Causal::top_left : simdattn::Causal::none;
  options.layout = c.layout;
  options.schedule = c.schedule;
  simdattn::mpi::Timings timings;
  options.timings = &timings;
  std::vector<double> call, compute, wait, computed_steps;
  Schedule ran = Schedule::ring;
  // One rank runs the one-process call (simdattn::mpi does the same at P = 1): with
  // --baseline, time only simdattn::scaled_dot_product_attention.
  const int mpi_calls = c.baseline && p == 1 ? 0 : c.warmup + c.reps;
  for (int rep = 0; rep < mpi_calls; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    simdattn::mpi::scaled_dot_product_attention(
        MPI_COMM_WORLD, {q.data(), c.n, lq, c.h, d}, {k.data(), c.n, lk, c.hkv, d},
        {v.data(), c.n, lk, c.hkv, d}, {out.data(), c.n, lq, c.h, d}, {}, options);
    const double t = max_over_ranks(timings.seconds);
    if (rep < c.warmup) continue;
    ran = timings.schedule;
    call.push_back(t);
    // Per step, averaged over the steps that computed (ring), or the one local kernel call.
    double busy = 0;
    int steps = 0;
    for (std::size_t s = 0; s < timings.step_computed.size(); ++s) {
      if (!timings.step_computed[s]) continue;
      busy += timings.step_compute_seconds[s];
      ++steps;
    }
    if (timings.step_computed.empty()) {
      busy = timings.compute_seconds;
      steps = 1;
    }
    compute.push_back(max_over_ranks(steps > 0 ? busy / steps : 0));
    wait.push_back(max_over_ranks(timings.wait_seconds / std::max(1, timings.steps)));
    computed_steps.push_back(steps);
  }

  // The link: one step's K/V slice around the ring, without computing.
  double link_s = 0;
  const std::size_t step_bytes = 2 * c.n * lk * c.hkv * d * sizeof(float);
  if (c.link && p > 1) {
    unsigned long long most = lk;  // the longest slice any rank sends
    MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    std::vector<float> back(2 * c.n * most * c.hkv * d);
    std::vector<float> send(k.size() * 2, 1.0f);
    std::vector<double> times;
    for (int rep = 0; rep < 3 + c.reps; ++rep) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      MPI_Sendrecv(send.data(), static_cast<int>(send.size()), MPI_FLOAT, (r + 1) % p, 0,
                   back.data(), static_cast<int>(back.size()), MPI_FLOAT, (r + p - 1) % p, 0,
                   MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      const double t = max_over_ranks(MPI_Wtime() - t0);
      if (rep >= 3) times.push_back(t);
    }
    link_s = median(times);
  }

  double baseline_s = 0;
  if (c.baseline && p == 1) {
    simdattn::Options o;
    o.threads = c.threads;
    o.causal = options.causal;
    std::vector<double> times;
    for (int rep = 0; rep < c.warmup + c.reps; ++rep) {
      const double t0 = MPI_Wtime();
      simdattn::scaled_dot_product_attention(
          {q.data(), c.n, lq, c.h, d}, {k.data(), c.n, lk, c.hkv, d}, {v.data(), c.n, lk, c.hkv, d},
          {out.data(), c.n, lq, c.h, d}, {}, o);
      if (rep >= c.warmup) times.push_back(MPI_Wtime() - t0);
    }
    baseline_s = median(times);
  }

  if (call.empty()) call.push_back(baseline_s);
  if (r == 0) {
    const double flops = 4.0 * c.n * c.l * c.lk * c.e * (c.causal ? 0.5 : 1.0);
    const double t = median(call);
    std::printf(
        "bench_mpi: P=%d threads=%d N=%zu Lq=%zu Lk=%zu E=%zu H=%zu H_kv=%zu causal=%s "
        "layout=%s schedule=%s isa=%s\n",
        p, c.threads, c.n, c.l, c.lk, c.e, c.h, c.hkv, c.causal ? "top_left" : "none",
        c.layout == Layout::zigzag ? "zigzag" : "contiguous",
        ran == Schedule::ulysses ? "ulysses" : "ring", simdattn::isa_name(simdattn::active_isa()));
    if (mpi_calls > 0) {
      std::printf(
          "  call: median %.2f ms (min %.2f, max %.2f over %d), %.1f GFLOP/s in all, %.1f "
          "per rank\n",
          t * 1e3, *std::min_element(call.begin(), call.end()) * 1e3,
          *std::max_element(call.begin(), call.end()) * 1e3, c.reps, flops / t / 1e9,
          flops / t / 1e9 / p);
      std::printf(
          "  per step (slowest rank, median): compute %.2f ms over %.0f computing steps, "
          "wait %.3f ms; %.2f MB of K/V per step\n",
          median(compute) * 1e3, median(computed_steps), median(wait) * 1e3, step_bytes / 1e6);
    }
    if (link_s > 0) {
      std::printf("  link: one step's %.2f MB around the ring alone in %.3f ms = %.2f GB/s\n",
                  step_bytes / 1e6, link_s * 1e3, step_bytes / link_s / 1e9);
    }
    if (baseline_s > 0) {
      std::printf(
          "  baseline: simdattn::scaled_dot_product_attention, one process, %.2f ms, "
          "%.1f GFLOP/s (call / baseline = %.3f)\n",
          baseline_s * 1e3, flops / baseline_s / 1e9, t / baseline_s);
    }
    std::printf(
        "result P=%d threads=%d L=%zu E=%zu H=%zu causal=%d layout=%s schedule=%s "
        "call_ms=%.3f step_compute_ms=%.3f step_wait_ms=%.4f step_MB=%.3f link_GBps=%.3f "
        "baseline_ms=%.3f\n",
        p, c.threads, c.l, c.e, c.h, c.causal ? 1 : 0,
        c.layout == Layout::zigzag ? "zigzag" : "contiguous",
        ran == Schedule::ulysses ? "ulysses" : "ring", t * 1e3, median(compute) * 1e3,
        median(wait) * 1e3, step_bytes / 1e6, link_s > 0 ? step_bytes / link_s / 1e9 : 0.0,
        baseline_s * 1e3);
  }
  MPI_Finalize();
  return 0;
}
