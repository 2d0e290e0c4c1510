// The console reporter that bench_attention and bench_projections share.
//
// Debian's libbenchmark is compiled with optimization (-O2) but without NDEBUG, so Google
// Benchmark opens every console run with "***WARNING*** Library was built as DEBUG. Timings may be
// affected.". That line is about Google Benchmark's own library, whose checks left in cost a few
// compares per timer call; read beside simdattn's output it looks like a verdict on the code
// timed. BuildNoteReporter<R> prints the context as R does, with that line replaced by one that
// says which library it means and how the timed code (this program, built in the same tree as
// simdattn) was compiled. The JSON context's "library_build_type" keeps Google Benchmark's word.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>

namespace bench {

/// Whether Google Benchmark reads a flag's value as true: anything but "0", "f", "n", "false",
/// "no" or "off" (any case), as its own parser does.
inline bool truthy_flag(std::string value) {
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (value.size() == 1)
    return std::isalnum(static_cast<unsigned char>(value[0])) != 0 && value != "0" &&
           value != "f" && value != "n";
  return value != "false" && value != "no" && value != "off";
}

/// What Google Benchmark's console flags in argv ask for, read before benchmark::Initialize
/// removes them: the last one given wins, as in its own parsing.
struct ConsoleFlags {
  bool console = true;  // --benchmark_format is console (the default), not json or csv
  /// --benchmark_color (auto, the default: when stdout is a terminal) and
  /// --benchmark_counters_tabular, as its default reporter takes them.
  benchmark::ConsoleReporter::OutputOptions options = benchmark::ConsoleReporter::OO_None;
};

inline ConsoleFlags console_flags(int argc, char** argv) {
  std::string format = "console", color = "auto";
  bool tabular = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--benchmark_format=", 0) == 0) format = arg.substr(19);
    if (arg.rfind("--benchmark_color=", 0) == 0) color = arg.substr(18);
    if (arg == "--benchmark_counters_tabular") tabular = true;
    if (arg.rfind("--benchmark_counters_tabular=", 0) == 0) tabular = truthy_flag(arg.substr(29));
  }
  int options = benchmark::ConsoleReporter::OO_None;
  if (color == "auto" ? isatty(fileno(stdout)) != 0 : truthy_flag(color)) {
    options |= benchmark::ConsoleReporter::OO_Color;
  }
  if (tabular) options |= benchmark::ConsoleReporter::OO_Tabular;
  return {format == "console", static_cast<benchmark::ConsoleReporter::OutputOptions>(options)};
}

/// The console context with Google Benchmark's DEBUG warning explained (see above).
inline std::string explain_debug_warning(const std::string& context) {
  static const std::string kWarning =
      "***WARNING*** Library was built as DEBUG. Timings may be affected.\n";
  const std::size_t at = context.find(kWarning);
  if (at == std::string::npos) return context;
#ifdef NDEBUG
  const std::string note =
      "Note: \"built as DEBUG\" is about Google Benchmark's own library (Debian's is optimized,\n"
      "with its checks kept); the code timed here (simdattn and this program) has NDEBUG.\n";
#else
  const std::string note =
      "***WARNING*** This program was built without NDEBUG (not a Release build), and so most\n"
      "likely was simdattn: timings are not representative.\n";
#endif
  return context.substr(0, at) + note + context.substr(at + kWarning.size());
}

/// A reporter R whose context has Google Benchmark's DEBUG warning explained.
template <class R>
class BuildNoteReporter : public R {
 public:
  using R::R;

  bool ReportContext(const benchmark::BenchmarkReporter::Context& context) override {
    std::ostream& err = this->GetErrorStream();
    std::ostringstream captured;
    this->SetErrorStream(&captured);
    const bool ok = R::ReportContext(context);
    this->SetErrorStream(&err);
    err << explain_debug_warning(captured.str()) << std::flush;
    return ok;
  }
};

}  // namespace bench
