#include "summary.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <sstream>

namespace bench {
namespace {

// The parts of a benchmark name <op>/<path>/<case>/<key>:<value>/.../threads:<t>.
struct NameParts {
  std::string op, path, case_name, shape;
  std::string isa;  // from /isa:<name>, when the run has several
  int threads = 1;
  bool ok = false;
};

NameParts parse_name(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream in(name);
  for (std::string p; std::getline(in, p, '/');) parts.push_back(p);
  NameParts n;
  if (parts.size() < 3) return n;
  n.op = parts[0];
  n.path = parts[1];
  n.case_name = parts[2];
  std::map<std::string, std::string> fields;
  std::vector<std::string> order;
  for (std::size_t i = 3; i < parts.size(); ++i) {
    const auto colon = parts[i].find(':');
    if (colon == std::string::npos) continue;
    const std::string key = parts[i].substr(0, colon), value = parts[i].substr(colon + 1);
    if (key == "threads") {
      n.threads = std::atoi(value.c_str());
      continue;
    }
    if (key == "isa") {
      n.isa = value;
      continue;
    }
    fields[key] = value;
    order.push_back(key);
  }
  // As the report writes shapes: N only when it is not 1, L when Lq == Lk.
  std::string shape;
  auto append = [&](const std::string& text) { shape += (shape.empty() ? "" : " ") + text; };
  for (const std::string& key : order) {
    const std::string& value = fields[key];
    if (key == "N" && value == "1") continue;
    if (key == "Lk" && fields.count("Lq") && fields["Lq"] == value) continue;
    if (key == "Lq" && fields.count("Lk") && fields["Lk"] == value) {
      append("L=" + value);
      continue;
    }
    append(key + "=" + value);
  }
  n.shape = shape;
  n.ok = true;
  return n;
}

std::string format_ms(double seconds) {
  char buf[32];
  const double ms = seconds * 1e3;
  std::snprintf(buf, sizeof buf, ms < 0.1 ? "%.4f" : ms < 10 ? "%.3f" : "%.1f", ms);
  return buf;
}

// "skipped: about 7.1 s per call, over ..." -> "skipped (~7.1 s)"; a failed check says so.
std::string format_error(const std::string& message) {
  if (message.rfind("skipped", 0) == 0) {
    const auto about = message.find("about ");
    if (about != std::string::npos) {
      const auto end = message.find(" s", about + 6);
      return "skipped (~" + message.substr(about + 6, end - about - 6) + " s)";
    }
    return "skipped";
  }
  return "FAILED check";
}

using Run = benchmark::BenchmarkReporter::Run;

double seconds_per_call(const Run& run) {
  return run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
}

double counter(const Run& run, const char* name) {
  const auto it = run.counters.find(name);
  return it == run.counters.end() ? 0.0 : it->second.value;
}

std::string format_cell(const char* format, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

SummaryReporter::SummaryReporter(OutputOptions options, bool all_aggregates)
    : BuildNoteReporter(options), all_aggregates_(all_aggregates) {}

void SummaryReporter::ReportRuns(const std::vector<Run>& runs) {
  std::vector<Run> shown;
  const Run* median = nullptr;
  for (const Run& run : runs) {
    if (run.run_type == Run::RT_Aggregate) {
      if (run.aggregate_name == "median") median = &run;
      if (!all_aggregates_ && run.aggregate_name != "median") continue;
    }
    Run copy = run;
    // In the JSON, not on the console: the check's error is the same for every repetition (its
    // stddev and cv are 0 and NaN), and the thread count is in the name.
    copy.counters.erase("rel_err");
    copy.counters.erase("omp_threads");
    shown.push_back(copy);
  }
  // Without an aggregate (one repetition, or only the plain runs displayed) the runs show.
  if (!all_aggregates_ && median != nullptr) {
    shown.erase(std::remove_if(shown.begin(), shown.end(),
                               [](const Run& r) { return r.run_type != Run::RT_Aggregate; }),
                shown.end());
  }
  ConsoleReporter::ReportRuns(shown);

  if (runs.empty()) return;
  Result result;
  const Run& first = runs.front();
  if (first.error_occurred) {
    result.error = first.error_message;
  } else if (median != nullptr) {
    result = rates_of(*median);
  } else {
    // No aggregate (one repetition, or aggregates not computed): the median of the plain runs,
    // with that run's rates.
    std::vector<const Run*> plain;
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Aggregate && !run.error_occurred) plain.push_back(&run);
    }
    if (!plain.empty()) {
      std::sort(plain.begin(), plain.end(), [](const Run* a, const Run* b) {
        return seconds_per_call(*a) < seconds_per_call(*b);
      });
      const Run& mid = *plain[plain.size() / 2];
      result = rates_of(mid);
    }
  }
  record(first, result);
}

SummaryReporter::Result SummaryReporter::rates_of(const Run& run) {
  Result r;
  r.seconds = seconds_per_call(run);
  // A benchmark without a FLOP count (generation: tokens per second) has no rate to show.
  if (run.counters.count("GFLOPS") != 0) {
    r.gflops = counter(run, "GFLOPS");
    r.frac_peak = counter(run, "frac_peak");
  }
  return r;
}

void SummaryReporter::record(const Run& run, const Result& result) {
  const NameParts n = parse_name(run.run_name.function_name);
  if (!n.ok) return;
  const std::string key = n.op + "/" + n.case_name + "/" + n.shape;
  auto it = row_index_.find(key);
  if (it == row_index_.end()) {
    it = row_index_.emplace(key, rows_.size()).first;
    rows_.push_back(Row{n.op, n.case_name, n.shape, {}, {}, {}});
  }
  Row& row = rows_[it->second];
  if (n.path == "naive") {
    row.naive = result;
    return;
  }
  // The name's ISA when the run has several, else the label's (a skipped or failed benchmark has
  // no label: it belongs to the row's ISA).
  std::string isa = !n.isa.empty() ? n.isa : run.report_label;
  if (isa.empty()) isa = row.isas.empty() ? "" : row.isas.front();
  if (std::find(row.isas.begin(), row.isas.end(), isa) == row.isas.end()) row.isas.push_back(isa);
  row.optimized[isa][n.threads] = result;
}

void SummaryReporter::print_summary(std::FILE* out) const {
  if (rows_.empty()) return;
  bool several_isas = false;
  std::set<int> thread_counts;
  for (const Row& row : rows_) {
    several_isas = several_isas || row.isas.size() > 1;
    for (const auto& by_isa : row.optimized) {
      for (const auto& by_threads : by_isa.second) thread_counts.insert(by_threads.first);
    }
  }
  const int top = thread_counts.empty() ? 1 : *thread_counts.rbegin();
  std::vector<std::vector<std::string>> table;
  std::vector<std::string> head = {"op", "case", "shape"};
  if (several_isas) head.push_back("isa");
  head.push_back("naive ms");
  for (int t : thread_counts) head.push_back("opt ms, " + std::to_string(t) + " thr");
  for (const char* h : {"speedup", "GFLOP/s", "of peak"}) head.push_back(h);
  table.push_back(head);
  auto time_cell = [](const Result& r) {
    return r.seconds > 0 ? format_ms(r.seconds) : !r.error.empty() ? format_error(r.error) : "-";
  };
  for (const Row& row : rows_) {
    const std::vector<std::string> isas =
        row.isas.empty() ? std::vector<std::string>{""} : row.isas;
    for (const std::string& isa : isas) {
      std::vector<std::string> cells = {row.op, row.case_name, row.shape};
      if (several_isas) cells.push_back(isa.empty() ? "-" : isa);
      cells.push_back(time_cell(row.naive));
      const auto by_isa = row.optimized.find(isa);
      const std::map<int, Result> none;
      const std::map<int, Result>& opt = by_isa == row.optimized.end() ? none : by_isa->second;
      for (int t : thread_counts) {
        const auto it = opt.find(t);
        cells.push_back(it == opt.end() ? "-" : time_cell(it->second));
      }
      const auto best = opt.find(top);
      if (best == opt.end() || best->second.seconds <= 0) {
        cells.insert(cells.end(), {"-", "-", "-"});
      } else {
        const Result& r = best->second;
        cells.push_back(row.naive.seconds > 0 ? format_cell("%.1fx", row.naive.seconds / r.seconds)
                                              : "-");
        if (r.gflops < 0) {
          cells.insert(cells.end(), {"-", "-"});
        } else {
          cells.push_back(format_cell("%.1f", r.gflops));
          cells.push_back(format_cell(r.frac_peak >= 0.1 ? "%.0f%%" : "%.1f%%", 100 * r.frac_peak));
        }
      }
      table.push_back(cells);
    }
  }
  std::vector<std::size_t> width(head.size(), 0);
  for (const auto& line : table) {
    for (std::size_t c = 0; c < line.size(); ++c) width[c] = std::max(width[c], line[c].size());
  }
  std::fprintf(out,
               "\nSummary (medians per call; naive on 1 thread; speedup = naive / optimized, and "
               "the optimized\npath's GFLOP/s and fraction of the FP32 peak measured at start-up, "
               "all at %d thread%s;\nFLOP counts: bench/README.md)\n\n",
               top, top > 1 ? "s" : "");
  const std::size_t text_columns = several_isas ? 4 : 3;
  for (const auto& line : table) {
    std::string text;
    for (std::size_t c = 0; c < line.size(); ++c) {
      const std::string pad(width[c] - line[c].size(), ' ');
      text += (c ? "  " : "") + (c < text_columns ? line[c] + pad : pad + line[c]);
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    std::fprintf(out, "%s\n", text.c_str());
  }
}

}  // namespace bench
