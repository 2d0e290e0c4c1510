// The console side of a run: one line per benchmark (its median), and at the end a short table
// that answers the run's question per case: how much faster the optimized path is than the
// naive one, and how close it comes to the machine's peak. The JSON of --benchmark_out is not
// affected: it keeps every repetition and counter for tools/report.py.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "console.hpp"

namespace bench {

class SummaryReporter : public BuildNoteReporter<benchmark::ConsoleReporter> {
 public:
  // all_aggregates: print Google Benchmark's mean, median, stddev and cv of each benchmark
  // instead of its median alone.
  SummaryReporter(OutputOptions options, bool all_aggregates);

  void ReportRuns(const std::vector<Run>& runs) override;

  // The table of every benchmark reported so far, grouped by op, case and shape.
  void print_summary(std::FILE* out) const;

 private:
  struct Result {
    double seconds = 0;  // median per call; 0 when there is none
    double gflops = -1;  // -1: the benchmark counts no FLOPs
    double frac_peak = -1;
    std::string error;  // why there is no time
  };
  struct Row {
    std::string op, case_name, shape;
    Result naive;                                            // threads:1
    std::map<std::string, std::map<int, Result>> optimized;  // by ISA, then thread count
    std::vector<std::string> isas;                           // in the order they came
  };

  static Result rates_of(const Run& run);
  void record(const Run& run, const Result& result);

  bool all_aggregates_;
  std::vector<Row> rows_;
  std::map<std::string, std::size_t> row_index_;  // "op/case/shape" -> rows_ index
};

}  // namespace bench
