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
// Below this many multiply-adds, one thread: a parallel region costs several microseconds.
constexpr double kSerialWorkLimit = 1 << 20;

}  // namespace

bool run_linear(const float* x, std::size_t rows, const PackedWeight& w, const float* bias,
                float* y, std::size_t ldy, int threads) {
  const kernels::KernelTable* table = kernels::kernel_table(active_isa());
  if (table == nullptr || table->gemm == nullptr) return false;
  const std::size_t row_blocks = (rows + kTaskRows - 1) / kTaskRows;
  const std::size_t col_blocks = (w.out + kTaskCols - 1) / kTaskCols;
  const std::size_t tasks = row_blocks * col_blocks;
  if (static_cast<double>(rows) * w.out * w.in < kSerialWorkLimit) threads = 1;

  auto run_task = [&](std::size_t t) {
    const std::size_t rb = t / col_blocks;
    const std::size_t cb = t % col_blocks;
    kernels::GemmArgs g;
    g.a = x + rb * kTaskRows * w.in;
    g.lda = w.in;
    g.m = std::min(kTaskRows, rows - rb * kTaskRows);
    g.n = std::min(kTaskCols, w.out - cb * kTaskCols);
    g.k = w.in;
    g.b_packed = w.data + cb * kTaskCols * w.in;
    g.bias = bias != nullptr ? bias + cb * kTaskCols : nullptr;
    g.c = y + rb * kTaskRows * ldy + cb * kTaskCols;
    g.ldc = ldy;
    table->gemm(g);
  };
  parallel_tasks(tasks, threads, /*dynamic=*/false, run_task);
  return true;
}

}  // namespace simdattn::detail
