// The projection driver: splits y = x W^T + b into blocks of rows and panel columns, one GEMM
// kernel call per block, on OpenMP threads.
#include <algorithm>

#include "driver.hpp"
#include "kernels/gemm/pack.hpp"
#include "kernels/kernel_table.hpp"
#include "simdattn/dispatch.hpp"

namespace simdattn::detail {
namespace {

// Rows per task: large enough that the packed A block is reused across many panels, small
// enough that 2 threads get several blocks at L = 512.
constexpr std::size_t kTaskRows = 96;
// Columns per task (a multiple of kPanel and of the 32-column AVX-512 micro-tile).
constexpr std::size_t kTaskCols = 256;
// Below this many multiply-adds, one thread: waking the team costs about a microsecond.
constexpr double kSerialWorkLimit = 1 << 16;

}  // namespace

bool run_linear(const float* x, std::size_t rows, const PackedWeight& w, const float* bias,
                float* y, std::size_t ldy, int threads) {
  const kernels::KernelTable* table = kernels::kernel_table(active_isa());
  if (table == nullptr || table->gemm == nullptr) return false;
  if (static_cast<double>(rows) * w.out * w.in < kSerialWorkLimit) threads = 1;
  const std::size_t row_blocks = (rows + kTaskRows - 1) / kTaskRows;
  // Few rows (the tutorial's L = 2, decoding): split the columns evenly instead, so each thread
  // reads only its share of the weight, and keeps reading the same share call after call (static
  // schedule) from its own L2: at E = 256 the 1 MiB of weights does not fit one core's L2.
  std::size_t task_cols = kTaskCols;
  if (row_blocks < static_cast<std::size_t>(threads)) {
    const std::size_t share = (w.out + threads - 1) / threads;
    task_cols = std::max<std::size_t>(32, (share + 31) / 32 * 32);
  }
  const std::size_t col_blocks = (w.out + task_cols - 1) / task_cols;
  const std::size_t tasks = row_blocks * col_blocks;

  auto run_task = [&](std::size_t t) {
    const std::size_t rb = t / col_blocks;
    const std::size_t cb = t % col_blocks;
    kernels::GemmArgs g;
    g.a = x + rb * kTaskRows * w.in;
    g.lda = w.in;
    g.m = std::min(kTaskRows, rows - rb * kTaskRows);
    g.n = std::min(task_cols, w.out - cb * task_cols);
    g.k = w.in;
    g.b_packed = w.data + cb * task_cols * w.in;
    g.bias = bias != nullptr ? bias + cb * task_cols : nullptr;
    g.c = y + rb * kTaskRows * ldy + cb * task_cols;
    g.ldc = ldy;
    table->gemm(g);
  };
  parallel_tasks(tasks, threads, /*dynamic=*/false, run_task);
  return true;
}

}  // namespace simdattn::detail
