// Debian's libbenchmark is compiled with optimization (-O2) but without NDEBUG, so Google
// Benchmark opens every console run with "***WARNING*** Library was built as DEBUG. Timings may be
// affected.". That line is about Google Benchmark's own library, whose checks left in cost a few
// compares per timer call; read beside simdattn's output it looks like a verdict on the code
// timed. BuildNoteReporter<R> prints the context as R does, with that line replaced by one that
// says which library it means and how the timed code (this program, built in the same tree as
// simdattn) was compiled. The JSON context's "library_build_type" keeps Google Benchmark's word.
#pragma once

#include <benchmark/benchmark.h>

#include <ostream>
#include <sstream>
#include <string>

namespace bench {

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
