// Splits y = x W^T + b into blocks of rows and panel columns, one GEMM kernel call per block,
// on OpenMP threads.
#include "driver/linear.hpp"

#include <algorithm>

#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "kernels/blocking.hpp"

namespace simdattn::detail {

void run_linear(const kernels::KernelTable& table, const float* x, std::size_t rows,
                const PackedWeight& w, const float* bias, float* y, std::size_t ldy, int threads) {
  using kernels::kGemmMinTaskCols;
  using kernels::kGemmTaskCols;
  using kernels::kGemmTaskRows;
  if (static_cast<double>(rows) * w.out * w.in < kernels::kGemmSerialWork) threads = 1;
  const std::size_t row_blocks = (rows + kGemmTaskRows - 1) / kGemmTaskRows;
  // Few rows (the tutorial's L = 2, decoding): split the columns evenly instead, so each thread
  // reads only its share of the weight, and keeps reading the same share call after call (static
  // schedule) from its own L2: at E = 256 the 1 MiB of weights does not fit one core's L2.
  std::size_t task_cols = kGemmTaskCols;
  if (row_blocks < static_cast<std::size_t>(threads)) {
    const std::size_t share = (w.out + threads - 1) / threads;
    task_cols = std::max(kGemmMinTaskCols,
                         (share + kGemmMinTaskCols - 1) / kGemmMinTaskCols * kGemmMinTaskCols);
  }
  const std::size_t col_blocks = (w.out + task_cols - 1) / task_cols;
  const std::size_t tasks = row_blocks * col_blocks;

  // Which operand consecutive tasks share: kernels/blocking.hpp, kGemmWeightMajorBytes.
  const bool weight_major = w.out * w.in * sizeof(float) > kernels::kGemmWeightMajorBytes;
  auto run_task = [&](std::size_t t) {
    const std::size_t rb = weight_major ? t % row_blocks : t / col_blocks;
    const std::size_t cb = weight_major ? t / row_blocks : t % col_blocks;
    kernels::GemmArgs g;
    g.a = x + rb * kGemmTaskRows * w.in;
    g.lda = w.in;
    g.m = std::min(kGemmTaskRows, rows - rb * kGemmTaskRows);
    g.n = std::min(task_cols, w.out - cb * task_cols);
    g.k = w.in;
    g.b_packed = w.data + cb * task_cols * w.in;
    g.bias = bias != nullptr ? bias + cb * task_cols : nullptr;
    g.c = y + rb * kGemmTaskRows * ldy + cb * task_cols;
    g.ldc = ldy;
    g.a_pack =
        table.gemm_copies_a ? thread_scratch(ScratchSlot::gemm, kernels::kGemmPackFloats) : nullptr;
    table.gemm(g);
  };
  // Many rows: dynamic, since a short last row block left the threads' static shares uneven
  // (bert's 2048 rows = 21 x 96 + 32): its input projection at 2 threads, AVX2, 42.7-44.5 ->
  // 41.0-41.3 ms, s4096's 152.0-154.8 -> 147.4-150.9 ms (interleaved, 3 rounds, load 1-1.5).
  // Few rows: static, each thread its own weight columns call after call.
  parallel_tasks(tasks, threads, /*dynamic=*/row_blocks >= static_cast<std::size_t>(threads),
                 run_task);
}

}  // namespace simdattn::detail
