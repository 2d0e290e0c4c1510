// The suite's entry point: Catch2's runner, after checking that the ISA forced by SIMDATTN_ISA
// can run here. CTest runs the suite once per ISA and treats exit code 77 as "skipped", so a
// machine without AVX-512 skips that run instead of failing it.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "simdattn/dispatch.hpp"

namespace {

constexpr int kSkipped = 77;

bool is_available(const std::string& name) {
  for (simdattn::Isa isa : simdattn::available_isas()) {
    if (name == simdattn::isa_name(isa)) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char* argv[]) {
  const char* forced = std::getenv("SIMDATTN_ISA");
  if (forced != nullptr && *forced != '\0') {
    const std::string name(forced);
    // An unknown name runs the suite anyway: test_dispatch.cpp checks that it is an error.
    if (simdattn::isa_from_name(name).has_value() && !is_available(name)) {
      std::printf("simdattn_tests: SIMDATTN_ISA=%s cannot run on this build or CPU: skipped\n",
                  forced);
      return kSkipped;
    }
    std::printf("simdattn_tests: SIMDATTN_ISA=%s\n", forced);
  } else {
    std::printf("simdattn_tests: SIMDATTN_ISA unset, active ISA %s\n",
                simdattn::isa_name(simdattn::active_isa()));
  }
  std::fflush(stdout);
  return Catch::Session().run(argc, argv);
}
