// Run-time ISA choice: the registry's one list, SIMDATTN_ISA really selecting the path that
// runs (CTest runs the suite once per ISA with it set), an unknown name being an error that
// says what is available, and the per-call (Options::isa) and per-process (set_active_isa)
// choices, which let one process run every ISA.
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "isa/registry.hpp"

using namespace simdattn;

namespace {

std::string available_list() {
  std::string out;
  for (Isa isa : available_isas()) out += (out.empty() ? "" : ", ") + std::string(isa_name(isa));
  return out;
}

#define SIMDATTN_TEST_ISA_(name) Isa::name,
const std::vector<Isa> kListed = {SIMDATTN_ISA_LIST(SIMDATTN_TEST_ISA_)};
#undef SIMDATTN_TEST_ISA_

// Restores the process's ISA when a test that changes it ends, whatever happens.
struct RestoreActiveIsa {
  Isa saved = active_isa();
  ~RestoreActiveIsa() { set_active_isa(saved); }
};

}  // namespace

TEST_CASE("available_isas lists what this machine runs in the registry's order, naive last",
          "[dispatch]") {
  const std::vector<Isa> isas = available_isas();
  REQUIRE_FALSE(isas.empty());
  CHECK(isas.back() == Isa::naive);
  std::size_t next = 0;  // position in the registry's list: strictly increasing
  for (std::size_t i = 0; i + 1 < isas.size(); ++i) {
    std::size_t pos = next;
    while (pos < kListed.size() && kListed[pos] != isas[i]) ++pos;
    INFO(isa_name(isas[i]));
    REQUIRE(pos < kListed.size());
    next = pos + 1;
  }
#if defined(__x86_64__) || defined(__aarch64__)
  CHECK(isas.size() >= 2);  // every x86-64 CPU runs the SSE2 kernels, every AArch64 one NEON
#endif
  for (Isa isa : kListed) {
    INFO(isa_name(isa));
    CHECK(isa_from_name(isa_name(isa)) == isa);
  }
  CHECK(isa_from_name("naive") == Isa::naive);
  CHECK(std::string(isa_name(Isa::avx512)) == "avx512");
  CHECK(std::string(isa_name(Isa::avx2)) == "avx2");
  CHECK(std::string(isa_name(Isa::sse2)) == "sse2");
  CHECK_FALSE(isa_from_name("bogus").has_value());
  CHECK_FALSE(isa_from_name("").has_value());
}

TEST_CASE("active_isa is the ISA SIMDATTN_ISA names, else the best available", "[dispatch]") {
  const char* forced = std::getenv("SIMDATTN_ISA");
  const std::string name = forced != nullptr ? forced : "";
  if (!name.empty() && !isa_from_name(name)) {
    std::string known;
    for (Isa isa : kListed) known += std::string(isa_name(isa)) + ", ";
    CHECK_THROWS_MATCHES(
        active_isa(), std::runtime_error,
        Catch::Matchers::Message("simdattn: SIMDATTN_ISA=" + name + " is not one of " + known +
                                 "naive (available here: " + available_list() + ")"));
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
  const kernels::KernelTable* table = kernels::table_for(active);
  if (active == Isa::naive) {
    CHECK(table == nullptr);
  } else {
    REQUIRE(table != nullptr);
    CHECK(table->isa == active);
  }
  CHECK(detail::kernels_for("test", Options{}) == table);
}

TEST_CASE("Options::isa runs one call on any available ISA, in one process", "[dispatch]") {
  const std::size_t n = 2, lq = 7, lk = 33, h = 3, d = 17;
  const auto q = test::random_normal(n * lq * h * d, 1);
  const auto k = test::random_normal(n * lk * h * d, 2);
  const auto v = test::random_normal(n * lk * h * d, 3);
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d};
  Options base;
  base.causal = Causal::bottom_right;
  const std::vector<double> ref = test::oracle_sdpa(qv, kv, vv, {}, base);
  for (Isa isa : available_isas()) {
    INFO("options.isa = " << isa_name(isa));
    Options o = base;
    o.isa = isa;
    const kernels::KernelTable* table = detail::kernels_for("test", o);
    if (isa == Isa::naive) {
      CHECK(table == nullptr);
    } else {
      REQUIRE(table != nullptr);
      CHECK(table->isa == isa);  // the call runs this ISA's kernels, whatever active_isa() is
    }
    std::vector<float> out(n * lq * h * d, -1.0f);
    scaled_dot_product_attention(qv, kv, vv, {out.data(), n, lq, h, d}, {}, o);
    test::check_close(out.data(), ref, isa_name(isa));
  }
}

TEST_CASE("Options::isa and set_active_isa refuse what this machine cannot run", "[dispatch]") {
  const std::size_t n = 1, l = 5, h = 1, d = 4;
  const std::vector<float> x(n * l * h * d, 1.0f);
  std::vector<float> out(x.size());
  const ConstHeadsView xv{x.data(), n, l, h, d};
  // On either path: Path::naive never runs the ISA, but a bad one is still the caller's error.
  auto check_refused = [&](Isa isa, const std::string& message) {
    for (Path path : {Path::optimized, Path::naive}) {
      INFO((path == Path::naive ? "naive" : "optimized") << " path");
      Options o;
      o.isa = isa;
      o.path = path;
      CHECK_THROWS_MATCHES(
          scaled_dot_product_attention(xv, xv, xv, {out.data(), n, l, h, d}, {}, o),
          std::invalid_argument,
          Catch::Matchers::Message("simdattn::scaled_dot_product_attention: " + message));
    }
  };
  const auto set_refused = [](Isa isa, const std::string& message) {
    CHECK_THROWS_MATCHES(set_active_isa(isa), std::invalid_argument,
                         Catch::Matchers::Message("simdattn::set_active_isa: " + message));
  };
  check_refused(static_cast<Isa>(99), "options.isa has the unknown value 99");
  set_refused(static_cast<Isa>(99), "isa has the unknown value 99");
  for (Isa isa : kListed) {
    bool available = false;
    for (Isa a : available_isas()) available |= a == isa;
    if (available) continue;
    INFO(isa_name(isa) << " is not available here");
    const std::string cannot = std::string(isa_name(isa)) +
                               " cannot run on this build or CPU (available: " + available_list() +
                               ")";
    check_refused(isa, "options.isa = " + cannot);
    set_refused(isa, "isa = " + cannot);
  }
}

TEST_CASE("set_active_isa changes the process's ISA for calls without Options::isa", "[dispatch]") {
  if (const char* forced = std::getenv("SIMDATTN_ISA")) {
    if (!isa_from_name(forced)) return;  // the unknown-name run checks only the error above
  }
  const RestoreActiveIsa restore;
  for (Isa isa : available_isas()) {
    INFO(isa_name(isa));
    set_active_isa(isa);
    CHECK(active_isa() == isa);
    CHECK(detail::kernels_for("test", Options{}) == kernels::table_for(isa));
  }
}
