// Running out of memory part way through a call over a KvCache: attention over the cache and the
// module's step reserve blocks and write the new tokens before the attention's scratch is taken,
// so a std::bad_alloc there must take the append back. The memory runs out for real: each call
// runs in a child process whose address space may grow by a few MiB only (RLIMIT_AS), against a
// history long enough that the gathered keys and values (prefill) or the reference's copies need
// far more. After the failure the child checks the cache's sequences, lengths, free blocks and
// tokens, lifts the limit and runs the same call again; another child, whose call never fails,
// runs it too, and both must give the same output and state, bit for bit. Likewise a module's
// reset_parameters and set_weight, which must leave the module as it was. Linux on x86-64 only,
// without AddressSanitizer or ThreadSanitizer (their shadow memory needs the address space).
#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SIMDATTN_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SIMDATTN_TEST_SANITIZED 1
#endif

#if defined(__linux__) && defined(__x86_64__) && !defined(SIMDATTN_TEST_SANITIZED)
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

// What the child's address space may still grow by at the call. Free memory inside it (the
// holes earlier tests left in the heap) is taken first, in pieces of kPiece, so that no block
// of kPiece is left anywhere: the call's small vectors fit, the 9.2 MiB reference copies and
// the 32 MiB gathered keys and values do not.
constexpr std::size_t kHeadroom = std::size_t{4} << 20;
constexpr std::size_t kPiece = std::size_t{8} << 20;
constexpr std::size_t kMostPieces = 4096;  // 32 GiB: more means the limit does not hold

// A child's exit codes.
enum Outcome : int {
  kRestored = 0,       // bad_alloc, the cache as before, the call run again
  kNoLimit = 10,       // kMostPieces pieces were granted: the limit does not hold
  kNoThrow = 11,       // the call did not run out of memory
  kOtherError = 12,    // the call threw something else
  kStateChanged = 13,  // the cache (or module) differs after the failure
  kRetryFailed = 14,   // the call run again threw
  kSetupFailed = 15,   // the child could not take its snapshot or set the limit
};

const char* describe(int code) {
  switch (code) {
    case kRestored:
      return "bad_alloc, the cache (or module) as before";
    case kNoLimit:
      return "the address-space limit does not hold here";
    case kNoThrow:
      return "the call did not run out of memory";
    case kOtherError:
      return "the call threw something other than std::bad_alloc";
    case kStateChanged:
      return "the cache (or module) changed although the call failed";
    case kRetryFailed:
      return "the call failed when run again without the limit";
    case kSetupFailed:
      return "the child's setup failed";
    default:
      return "the child crashed or exited otherwise";
  }
}

// Every sequence's length and tokens, and the free blocks.
struct CacheState {
  std::size_t free_blocks = 0;
  std::vector<SequenceId> ids;
  std::vector<std::size_t> lengths;
  std::vector<std::vector<float>> tokens;  // keys then values, per sequence
  bool operator==(const CacheState& o) const {
    return free_blocks == o.free_blocks && ids == o.ids && lengths == o.lengths &&
           tokens == o.tokens;
  }
};

CacheState snapshot(const KvCache& cache) {
  CacheState s;
  s.free_blocks = cache.free_blocks();
  s.ids = cache.sequences();
  const std::size_t row = cache.kv_heads() * cache.head_dim();
  for (SequenceId id : s.ids) {
    const std::size_t l = cache.length(id);
    s.lengths.push_back(l);
    std::vector<float> t(2 * l * row);
    cache.read(id, 0, l, t.data(), t.data() + l * row);
    s.tokens.push_back(std::move(t));
  }
  return s;
}

std::size_t address_space_bytes() {
  unsigned long pages = 0;
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  const int got = std::fscanf(f, "%lu", &pages);
  std::fclose(f);
  return got == 1 ? pages * static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

// Memory both processes see: the child's output of the call run again, then the free blocks and
// lengths after it.
struct Shared {
  float* out;
  std::size_t* counts;
  Shared(std::size_t out_floats, std::size_t count_slots) {
    const std::size_t bytes = out_floats * sizeof(float) + count_slots * sizeof(std::size_t);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    base = p;
    size = bytes;
    counts = reinterpret_cast<std::size_t*>(p);
    out = reinterpret_cast<float*>(counts + count_slots);
  }
  ~Shared() { munmap(base, size); }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

 private:
  void* base = nullptr;
  std::size_t size = 0;
};

void record_after(const KvCache& cache, std::size_t* counts) {
  counts[0] = cache.free_blocks();
  std::size_t i = 1;
  for (SequenceId id : cache.sequences()) counts[i++] = cache.length(id);
}

// Runs `call` with the address space capped at its size now plus kHeadroom and every free piece
// of kPiece under the cap taken, then lifts the cap. Returns the call's Outcome.
int call_under_cap(const std::function<void()>& call) {
  const std::size_t used = address_space_bytes();
  rlimit old{};
  if (used == 0 || getrlimit(RLIMIT_AS, &old) != 0) return kSetupFailed;
  rlimit tight = old;
  tight.rlim_cur = used + kHeadroom;
  if (old.rlim_cur != RLIM_INFINITY && tight.rlim_cur >= old.rlim_cur) return kSetupFailed;
  if (setrlimit(RLIMIT_AS, &tight) != 0) return kSetupFailed;
  static void* held[kMostPieces];
  std::size_t pieces = 0;
  while (pieces < kMostPieces && (held[pieces] = std::malloc(kPiece)) != nullptr) ++pieces;
  int code = kNoLimit;
  if (pieces < kMostPieces) {
    try {
      call();
      code = kNoThrow;
    } catch (const std::bad_alloc&) {
      code = kRestored;
    } catch (...) {
      code = kOtherError;
    }
  }
  setrlimit(RLIMIT_AS, &old);
  for (std::size_t i = 0; i < pieces; ++i) std::free(held[i]);
  return code;
}

// Runs `body` (which must not throw) in a child process; returns its exit code, -1 if it did not
// exit. The parent's own scratch, cache and module stay as they were, so that each child starts
// from the same state.
int exit_code_in_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) _exit(body());
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// In a child: with `limit`, `call` (writing `out`) under the cap, the checks above, and the call
// again without it; else the call alone. Returns the child's Outcome; `shared` then holds the
// output and state of its last call.
int run_in_child(KvCache& cache, const std::vector<float>& out, const std::function<void()>& call,
                 bool limit, Shared& shared) {
  return exit_code_in_child([&] {
    int code = kRestored;
    try {
      if (limit) {
        const CacheState before = snapshot(cache);
        code = call_under_cap(call);
        if (code == kRestored && !(snapshot(cache) == before)) code = kStateChanged;
      }
      if (code == kRestored) {
        try {
          call();
          std::copy(out.begin(), out.end(), shared.out);
          record_after(cache, shared.counts);
        } catch (...) {
          code = kRetryFailed;
        }
      }
    } catch (...) {
      code = kSetupFailed;
    }
    return code;
  });
}

// On each path (one thread): runs `call` in a failing child and in one that does not fail;
// checks as the header says.
void check_taken_back(KvCache& cache, const std::vector<float>& out,
                      const std::function<void(const Options&)>& call_with) {
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    o.threads = 1;
    const std::function<void()> call = [&] { call_with(o); };
    const std::size_t slots = 1 + cache.sequences().size();
    Shared failed(out.size(), slots), plain(out.size(), slots);
    const int code = run_in_child(cache, out, call, true, failed);
    INFO("child: " << describe(code) << " (exit code " << code << ")");
    if (code == kNoLimit) {
      WARN("RLIMIT_AS does not bound allocations here: the out-of-memory check is skipped");
      return;
    }
    REQUIRE(code == kRestored);
    REQUIRE(run_in_child(cache, out, call, false, plain) == kRestored);
    CHECK(std::memcmp(failed.out, plain.out, out.size() * sizeof(float)) == 0);
    CHECK(std::equal(failed.counts, failed.counts + slots, plain.counts));
  }
}

// A cache whose pool holds 2^18 tokens of one kv head of 16, with a sequence of 150000 tokens
// (its last block part full) and a fork of it cut 10 tokens shorter that shares every block:
// appending to both copies the shared last block for the fork and writes into it in place for
// the longer sequence, past the fork's tokens (in place for the fork would overwrite tokens of
// the longer sequence, which taking the append back must not lose).
struct LongHistory {
  static constexpr std::size_t kKvHeads = 1, kD = 16, kHistory = 150000, kCut = 10;
  KvCache cache;
  SequenceId a, b;
  LongHistory()
      : cache(test::cache_config(KvCache::blocks_for(std::size_t{1} << 18) + 8, kKvHeads, kD)) {
    a = cache.add_sequence();
    const auto k = test::random_normal(kHistory * kKvHeads * kD, 1);
    const auto v = test::random_normal(kHistory * kKvHeads * kD, 2);
    cache.append({a}, {k.data(), 1, kHistory, kKvHeads, kD}, {v.data(), 1, kHistory, kKvHeads, kD});
    b = cache.fork(a);
    cache.truncate(b, kHistory - kCut);
  }
};

}  // namespace

TEST_CASE("cache attention: running out of memory part way takes the append back",
          "[kv_cache][attention][reliability]") {
  // 8 query heads over the one kv head, 20 new tokens: 160 rows per kv head, more than 8 passes
  // of the paged kernel hold, so the prefill route that gathers the history as float (2 x 2^18 x
  // 16 floats) before its attention.
  constexpr std::size_t n = 2, t = 20, h = 8, d = LongHistory::kD, kvh = LongHistory::kKvHeads;
  LongHistory history;
  const auto q = test::random_normal(n * t * h * d, 3);
  const auto k = test::random_normal(n * t * kvh * d, 4);
  const auto v = test::random_normal(n * t * kvh * d, 5);
  std::vector<float> out(n * t * h * d);
  check_taken_back(history.cache, out, [&](const Options& o) {
    scaled_dot_product_attention(history.cache, {history.a, history.b}, {q.data(), n, t, h, d},
                                 {k.data(), n, t, kvh, d}, {v.data(), n, t, kvh, d},
                                 {out.data(), n, t, h, d}, o);
  });
}

TEST_CASE("module step: running out of memory part way takes the append back",
          "[module][kv_cache][reliability]") {
  constexpr std::size_t n = 2, t = 20, h = 8, e = h * LongHistory::kD;  // the gathering route
  const MultiHeadAttention m(e, h, KvHeads{LongHistory::kKvHeads}, 6);
  LongHistory history;
  const Tensor x = Tensor::randn(n, t, e, 7);
  std::vector<float> out(n * t * e);
  check_taken_back(history.cache, out, [&](const Options& o) {
    m.step(history.cache, {history.a, history.b}, {x.data(), n, t, e}, {out.data(), n, t, e}, o);
  });
}

TEST_CASE("reset_parameters and set_weight: running out of memory leaves the module as it was",
          "[module][reliability]") {
  // E = 1024: each new weight is 4 MiB, and its packed copies as much again, more than the cap
  // leaves. The module must keep its weights and biases and the packed copies that the optimized
  // path reads: both paths give their earlier output bit for bit.
  constexpr std::size_t e = 1024, h = 8, l = 3;
  MultiHeadAttention m(e, h, 1);
  m.set_bias(Projection::key, test::random_normal(e, 2));  // one that the reset would remove
  const Tensor x = Tensor::randn(1, l, e, 3);
  const std::vector<float> w = test::random_normal(e * e, 4);  // taken before the cap
  const Projection all[] = {Projection::query, Projection::key, Projection::value,
                            Projection::output};
  auto state = [&] {
    std::vector<std::vector<float>> s;
    for (Projection p : all) {
      s.push_back(m.weight(p));
      s.push_back(m.bias(p));
    }
    for (Path path : kPaths) {
      Options o;
      o.path = path;
      o.threads = 1;
      s.push_back(m.forward(x, x, x, {}, o).values());
    }
    return s;
  };
  const std::vector<std::vector<float>> before = state();
  const std::pair<const char*, std::function<void()>> calls[] = {
      {"reset_parameters", [&] { m.reset_parameters(5); }},
      {"set_weight", [&] { m.set_weight(Projection::value, w); }},
  };
  for (const auto& [name, call] : calls) {
    INFO(name);
    const int code = exit_code_in_child([&] {
      try {
        const int outcome = call_under_cap(call);
        return outcome == kRestored && !(state() == before) ? int{kStateChanged} : outcome;
      } catch (...) {
        return int{kSetupFailed};
      }
    });
    INFO("child: " << describe(code) << " (exit code " << code << ")");
    if (code == kNoLimit) {
      WARN("RLIMIT_AS does not bound allocations here: the out-of-memory check is skipped");
      return;
    }
    CHECK(code == kRestored);
  }
}

#endif  // Linux on x86-64 without AddressSanitizer or ThreadSanitizer
