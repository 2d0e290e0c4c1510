// libFuzzer target for the safetensors loader (include/simdattn/safetensors.hpp).
//
// The input is a whole file, read in place with SafetensorsFile::from_memory (libFuzzer's
// buffer has exactly the input's size, so ASan sees any read past the end). A file the loader
// accepts must keep every promise of its header: each tensor reads back as its entry says, in
// every form its dtype allows; loading a module either works (and the module then runs a
// forward) or throws SafetensorsError. Anything else aborts: another exception type, a size
// that disagrees with the entry, a crash, or a sanitizer report.
// Seeds: corpus/safetensors (make_safetensors_seeds.py); dictionary: safetensors.dict.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "simdattn/safetensors.hpp"
#include "simdattn/simdattn.hpp"

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_safetensors: %s\n", what.c_str());
  std::abort();
}

// Runs f; SafetensorsError is an answer, any other exception a bug. Returns whether f returned.
template <class F>
bool accepted(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const simdattn::SafetensorsError&) {
    return false;
  } catch (const std::exception& e) {
    fail(std::string(what) + " threw something other than SafetensorsError: " + e.what());
  }
}

bool is_float_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

// Every tensor of an accepted file reads back with the size its entry promises.
void read_every_tensor(const simdattn::SafetensorsFile& file) {
  for (const std::string& name : file.tensor_names()) {
    const simdattn::SafetensorsEntry& e = file.entry(name);
    if (e.end < e.begin) fail("entry '" + name + "' has end < begin");
    std::vector<std::uint8_t> bytes;
    accepted("read_bytes", [&] { bytes = file.read_bytes(name); });
    if (bytes.size() != e.end - e.begin) {
      fail("read_bytes('" + name + "') gave " + std::to_string(bytes.size()) +
           " bytes, entry says " + std::to_string(e.end - e.begin));
    }
    if (is_float_dtype(e.dtype)) {
      std::vector<float> f;
      if (!accepted("read_float", [&] { f = file.read_float(name); }) || f.size() != e.numel()) {
        fail("read_float('" + name + "') of a " + e.dtype + " tensor failed or has the wrong size");
      }
    }
    if (is_float_dtype(e.dtype) || e.dtype == "F64") {
      std::vector<double> d;
      if (!accepted("read_double", [&] { d = file.read_double(name); }) || d.size() != e.numel()) {
        fail("read_double('" + name + "') of a " + e.dtype +
             " tensor failed or has the wrong size");
      }
    }
  }
}

// A loaded module is a working module: one forward with its embed size must not crash.
void run_forward(const simdattn::MultiHeadAttention& m) {
  const std::size_t e = m.embed_size();
  if (e > 256) return;  // keep an input's run short
  const simdattn::Tensor x = simdattn::Tensor::randn(1, 3, e, 1);
  simdattn::Options o;
  o.threads = 1;
  m.forward(x, x, x, {}, o);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<simdattn::SafetensorsFile> opened;
  if (!accepted("from_memory", [&] {
        opened.push_back(simdattn::SafetensorsFile::from_memory(data, size, "fuzz"));
      })) {
    return 0;
  }
  const simdattn::SafetensorsFile& file = opened.front();
  read_every_tensor(file);
  // Load with and without the prefix of the first tensor name that has one.
  std::vector<std::string> prefixes = {""};
  for (const std::string& name : file.tensor_names()) {
    const auto dot = name.rfind('.');
    if (dot != std::string::npos && (name.compare(dot, std::string::npos, ".weight") == 0 ||
                                     name.compare(dot, std::string::npos, ".bias") == 0)) {
      const auto module_dot = name.rfind('.', dot - 1);
      if (module_dot != std::string::npos) {
        prefixes.push_back(name.substr(0, module_dot + 1));
        break;
      }
    }
  }
  for (const std::string& prefix : prefixes) {
    for (std::size_t heads : {std::size_t{1}, std::size_t{2}}) {
      std::vector<simdattn::MultiHeadAttention> loaded;
      if (accepted("load_multi_head_attention", [&] {
            loaded.push_back(simdattn::load_multi_head_attention(file, heads, prefix));
          })) {
        run_forward(loaded.front());
        // load_weights into the module it came from must work again, unchanged.
        if (!accepted("load_weights",
                      [&] { simdattn::load_weights(loaded.front(), file, prefix); })) {
          fail("load_weights refused a file that load_multi_head_attention accepted");
        }
      }
    }
  }
  return 0;
}
