// Run-time ISA choice: SIMDATTN_ISA really selects the path that runs (CTest runs the suite once
// per ISA with it set), and an unknown name is an error that says what is available.
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "kernels/kernel_table.hpp"

using namespace simdattn;

namespace {

std::string available_list() {
  std::string out;
  for (Isa isa : available_isas()) out += (out.empty() ? "" : ", ") + std::string(isa_name(isa));
  return out;
}

}  // namespace

TEST_CASE("available_isas lists what this machine runs, best first, naive last", "[dispatch]") {
  const std::vector<Isa> isas = available_isas();
  REQUIRE_FALSE(isas.empty());
  CHECK(isas.back() == Isa::naive);
  for (std::size_t i = 1; i < isas.size(); ++i) {
    CHECK(static_cast<int>(isas[i - 1]) > static_cast<int>(isas[i]));  // best first, no repeats
  }
#if defined(__x86_64__)
  CHECK(isas.size() >= 2);  // every x86-64 CPU runs the SSE2 kernels
#endif
  CHECK(std::string(isa_name(Isa::avx512)) == "avx512");
  CHECK(std::string(isa_name(Isa::avx2)) == "avx2");
  CHECK(std::string(isa_name(Isa::sse2)) == "sse2");
  CHECK(std::string(isa_name(Isa::naive)) == "naive");
}

TEST_CASE("active_isa is the ISA SIMDATTN_ISA names, else the best available", "[dispatch]") {
  const char* forced = std::getenv("SIMDATTN_ISA");
  const std::string name = forced != nullptr ? forced : "";
  bool known = false;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::sse2, Isa::naive}) known |= name == isa_name(isa);
  if (!name.empty() && !known) {
    CHECK_THROWS_MATCHES(active_isa(), std::runtime_error,
                         Catch::Matchers::Message("simdattn: SIMDATTN_ISA=" + name +
                                                  " is not one of avx512, avx2, sse2, naive "
                                                  "(available here: " +
                                                  available_list() + ")"));
    return;
  }
  const Isa active = active_isa();
  INFO("SIMDATTN_ISA=" << name << ", active " << isa_name(active));
  if (name.empty()) {
    CHECK(active == available_isas().front());
  } else {
    CHECK(isa_name(active) == name);
  }
  // The optimized path really has kernels for that ISA (none for naive: it runs the reference).
  const kernels::KernelTable* table = kernels::kernel_table(active);
  if (active == Isa::naive) {
    CHECK(table == nullptr);
  } else {
    REQUIRE(table != nullptr);
    CHECK(table->isa == active);
  }
}
