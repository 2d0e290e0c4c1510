// safetensors: header validation, F16/BF16 conversion, and MultiHeadAttention weights from
// PyTorch state dicts. The header is JSON, parsed by nlohmann-json (never by hand); nothing is
// allocated in proportion to a size the file claims before the file is known to hold the bytes.
#include "simdattn/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <utility>

#include "half.hpp"
#include "module_impl.hpp"

#ifdef SIMDATTN_HAVE_NLOHMANN_JSON
#include <nlohmann/json.hpp>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "simdattn's safetensors reader copies little-endian tensor bytes as they are"
#endif

namespace simdattn {
namespace {

[[noreturn]] void fail(const std::string& file, const std::string& problem) {
  throw SafetensorsError("simdattn: safetensors '" + file + "': " + problem);
}

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string range_text(const SafetensorsEntry& e) {
  return "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
}

// Bytes per element of the dtypes the safetensors specification lists. Entries of any other
// dtype (a newer format) get the range and overlap checks only, and cannot be read as numbers.
std::size_t dtype_size(const std::string& dtype) {
  static const std::map<std::string, std::size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

bool is_float_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

// The 8-byte little-endian header length, checked against the bytes that follow it.
std::size_t header_length(const std::string& file, const std::uint8_t* first8,
                          std::size_t file_size) {
  if (file_size < 8) {
    fail(file, "truncated file: " + std::to_string(file_size) +
                   " bytes, but a safetensors file starts with an 8-byte header length");
  }
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | first8[i];
  if (n > file_size - 8) {
    fail(file, "header length " + std::to_string(n) + " is past the end of the file (only " +
                   std::to_string(file_size - 8) + " bytes follow it): truncated or not a " +
                   "safetensors file");
  }
  return static_cast<std::size_t>(n);
}

void check_overlaps(const std::string& file,
                    const std::map<std::string, SafetensorsEntry>& entries) {
  using Item = const std::pair<const std::string, SafetensorsEntry>*;
  std::vector<Item> order;
  order.reserve(entries.size());
  for (const auto& item : entries) order.push_back(&item);
  std::sort(order.begin(), order.end(), [](Item a, Item b) {
    return std::make_pair(a->second.begin, a->second.end) <
           std::make_pair(b->second.begin, b->second.end);
  });
  Item reach = nullptr;  // the tensor that ends last among those seen so far
  for (Item item : order) {
    if (item->second.begin == item->second.end) continue;  // empty tensors occupy nothing
    if (reach != nullptr && item->second.begin < reach->second.end) {
      fail(file, "overlapping data offsets: tensor '" + reach->first + "' " +
                     range_text(reach->second) + " and tensor '" + item->first + "' " +
                     range_text(item->second) + " share bytes");
    }
    if (reach == nullptr || item->second.end > reach->second.end) reach = item;
  }
}

// Range, size and element-count checks of one entry, whatever parsed the header.
void check_entry(const std::string& file, const std::string& tensor, const SafetensorsEntry& e,
                 std::size_t data_size) {
  auto invalid = [&](const std::string& what) {
    fail(file, "invalid header: tensor '" + tensor + "' " + what);
  };
  std::size_t numel = 1;
  for (std::size_t d : e.shape) {
    if (__builtin_mul_overflow(numel, d, &numel)) {
      invalid("has shape " + shape_text(e.shape) + ": too many elements");
    }
  }
  if (e.begin > e.end) invalid("has data_offsets " + range_text(e) + " that end before they begin");
  if (e.end > data_size) {
    fail(file, "data offsets out of range: tensor '" + tensor + "' has data_offsets " +
                   range_text(e) + " but the data section holds " + std::to_string(data_size) +
                   " bytes (truncated file?)");
  }
  const std::size_t item = dtype_size(e.dtype);
  if (item == 0) return;
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(numel, item, &bytes)) {
    invalid("has shape " + shape_text(e.shape) + ": too many bytes");
  }
  if (bytes != e.end - e.begin) {
    fail(file, "data offsets do not match the shape: tensor '" + tensor + "' has data_offsets " +
                   range_text(e) + " (" + std::to_string(e.end - e.begin) + " bytes) but " +
                   e.dtype + " " + shape_text(e.shape) + " needs " + std::to_string(bytes));
  }
}

#ifdef SIMDATTN_HAVE_NLOHMANN_JSON

using Json = nlohmann::json;

// The header is three levels deep; a bound on nesting keeps hostile input from costing more.
constexpr int kMaxJsonDepth = 16;
struct TooDeep {};

std::size_t json_size(const std::string& file, const std::string& tensor, const char* field,
                      const Json& v) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > std::numeric_limits<std::size_t>::max()) {
    fail(file, "invalid header: tensor '" + tensor + "' has " + field + " " + v.dump() +
                   ", expected non-negative integers");
  }
  return static_cast<std::size_t>(v.get<std::uint64_t>());
}

// An entry's fields as written; check_entry() judges their values.
SafetensorsEntry parse_entry(const std::string& file, const std::string& tensor, const Json& v) {
  auto invalid = [&](const std::string& what) {
    fail(file, "invalid header: tensor '" + tensor + "' " + what);
  };
  if (!v.is_object()) invalid("is " + v.dump() + ", expected an object");
  const auto dtype = v.find("dtype");
  const auto shape = v.find("shape");
  const auto offsets = v.find("data_offsets");
  if (dtype == v.end() || !dtype->is_string()) invalid("has no string \"dtype\"");
  if (shape == v.end() || !shape->is_array()) invalid("has no array \"shape\"");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2) {
    invalid("has no \"data_offsets\": [begin, end]");
  }
  SafetensorsEntry e;
  e.dtype = dtype->get<std::string>();
  for (const Json& d : *shape) e.shape.push_back(json_size(file, tensor, "shape", d));
  e.begin = json_size(file, tensor, "data_offsets", (*offsets)[0]);
  e.end = json_size(file, tensor, "data_offsets", (*offsets)[1]);
  return e;
}

void parse_json_header(const std::string& file, const char* text, std::size_t size,
                       std::map<std::string, std::string>& metadata,
                       std::map<std::string, SafetensorsEntry>& entries) {
  Json header;
  try {
    header = Json::parse(text, text + size, [](int depth, Json::parse_event_t event, Json&) {
      if (depth > kMaxJsonDepth && (event == Json::parse_event_t::object_start ||
                                    event == Json::parse_event_t::array_start)) {
        throw TooDeep{};
      }
      return true;
    });
  } catch (const Json::exception& e) {
    fail(file, std::string("invalid JSON in the header: ") + e.what());
  } catch (const TooDeep&) {
    fail(file, "invalid JSON in the header: nested deeper than " + std::to_string(kMaxJsonDepth) +
                   " levels");
  }
  if (!header.is_object()) {
    fail(file,
         std::string("invalid header: a JSON ") + header.type_name() + ", expected an object");
  }
  for (const auto& [key, value] : header.items()) {
    if (key != "__metadata__") {
      entries[key] = parse_entry(file, key, value);
      continue;
    }
    if (!value.is_object()) fail(file, "invalid header: \"__metadata__\" is not an object");
    for (const auto& [mkey, mvalue] : value.items()) {
      if (!mvalue.is_string()) {
        fail(file, "invalid header: \"__metadata__\" value of '" + mkey + "' is " + mvalue.dump() +
                       ", expected a string");
      }
      metadata[mkey] = mvalue.get<std::string>();
    }
  }
}

#else

void parse_json_header(const std::string& file, const char*, std::size_t,
                       std::map<std::string, std::string>&,
                       std::map<std::string, SafetensorsEntry>&) {
  fail(file,
       "this simdattn was built without nlohmann-json, which reads safetensors headers: "
       "install Debian's nlohmann-json3-dev and rebuild simdattn");
}

#endif

void parse_header(const std::string& file, const char* text, std::size_t size,
                  std::size_t data_size, std::map<std::string, std::string>& metadata,
                  std::map<std::string, SafetensorsEntry>& entries) {
  parse_json_header(file, text, size, metadata, entries);
  for (const auto& [name, e] : entries) check_entry(file, name, e, data_size);
  check_overlaps(file, entries);
}

}  // namespace

std::size_t SafetensorsEntry::numel() const {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open the file: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(0, std::ios::beg);
  if (!in || end < 0) fail(path, "cannot read the file's size");
  const std::size_t size = static_cast<std::size_t>(end);
  std::uint8_t first8[8] = {};
  const std::size_t prefix = std::min<std::size_t>(size, 8);
  in.read(reinterpret_cast<char*>(first8), static_cast<std::streamsize>(prefix));
  if (static_cast<std::size_t>(in.gcount()) != prefix) {
    fail(path, "cannot read the file (a directory?)");
  }
  SafetensorsFile f;
  f.name_ = path;
  f.path_ = path;
  const std::size_t n = header_length(path, first8, size);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  if (static_cast<std::size_t>(in.gcount()) != n) {
    fail(path, "truncated file: the header ends early");
  }
  f.data_start_ = 8 + n;
  f.data_size_ = size - 8 - n;
  parse_header(path, header.data(), n, f.data_size_, f.metadata_, f.entries_);
  return f;
}

SafetensorsFile SafetensorsFile::from_memory(const void* data, std::size_t size, std::string name) {
  if (data == nullptr && size != 0) {
    throw std::invalid_argument("simdattn::SafetensorsFile::from_memory: data is null, size " +
                                std::to_string(size));
  }
  SafetensorsFile f;
  f.name_ = std::move(name);
  f.memory_ = static_cast<const std::uint8_t*>(data);
  const std::size_t n = header_length(f.name_, f.memory_, size);
  f.data_start_ = 8 + n;
  f.data_size_ = size - 8 - n;
  parse_header(f.name_, reinterpret_cast<const char*>(f.memory_ + 8), n, f.data_size_, f.metadata_,
               f.entries_);
  return f;
}

std::vector<std::string> SafetensorsFile::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& item : entries_) names.push_back(item.first);
  return names;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& tensor) const {
  const auto it = entries_.find(tensor);
  if (it == entries_.end()) fail(name_, "missing tensor '" + tensor + "'");
  return it->second;
}

void SafetensorsFile::read_range(std::size_t begin, std::size_t bytes, void* out) const {
  if (bytes == 0) return;
  if (memory_ != nullptr) {
    std::memcpy(out, memory_ + data_start_ + begin, bytes);
    return;
  }
  std::ifstream in(path_, std::ios::binary);
  if (!in) fail(name_, std::string("cannot open the file again: ") + std::strerror(errno));
  in.seekg(static_cast<std::streamoff>(data_start_ + begin));
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(bytes));
  if (!in || static_cast<std::size_t>(in.gcount()) != bytes) {
    fail(name_, "truncated file: tensor data ends early (did the file change after opening?)");
  }
}

std::vector<float> SafetensorsFile::read_float(const std::string& tensor) const {
  const SafetensorsEntry& e = entry(tensor);
  // The dtype first: the header checks sizes against the bytes for known dtypes only, so an
  // unknown one may claim any number of elements.
  if (!is_float_dtype(e.dtype)) {
    fail(name_, "wrong dtype: tensor '" + tensor + "' is " + e.dtype +
                    ", expected F32, F16 or BF16 (in PyTorch, .float() before saving)");
  }
  const std::size_t n = e.numel();
  std::vector<float> out(n);
  if (e.dtype == "F32") {
    read_range(e.begin, n * sizeof(float), out.data());
  } else if (e.dtype == "F16" || e.dtype == "BF16") {
    std::vector<std::uint16_t> raw(n);
    read_range(e.begin, n * sizeof(std::uint16_t), raw.data());
    auto convert = e.dtype == "F16" ? detail::f16_to_float : detail::bf16_to_float;
    std::transform(raw.begin(), raw.end(), out.begin(), convert);
  }
  return out;
}

std::vector<double> SafetensorsFile::read_double(const std::string& tensor) const {
  const SafetensorsEntry& e = entry(tensor);
  if (e.dtype == "F64") {
    std::vector<double> out(e.numel());
    read_range(e.begin, out.size() * sizeof(double), out.data());
    return out;
  }
  if (!is_float_dtype(e.dtype)) {
    fail(name_,
         "wrong dtype: tensor '" + tensor + "' is " + e.dtype + ", expected F64, F32, F16 or BF16");
  }
  const std::vector<float> f = read_float(tensor);
  return std::vector<double>(f.begin(), f.end());
}

std::vector<std::uint8_t> SafetensorsFile::read_bytes(const std::string& tensor) const {
  const SafetensorsEntry& e = entry(tensor);
  std::vector<std::uint8_t> out(e.end - e.begin);
  read_range(e.begin, out.size(), out.data());
  return out;
}

// --- MultiHeadAttention parameters ----------------------------------------------------------

namespace {

constexpr Projection kProjections[] = {Projection::query, Projection::key, Projection::value,
                                       Projection::output};

struct Parameters {
  std::size_t e = 0;
  std::size_t kv_e = 0;          // out features of the key and value projections
  std::vector<float> weight[4];  // in kProjections order
  std::vector<float> bias[4];    // empty: the file has none
};

std::string with_dot(const std::string& prefix) {
  return prefix.empty() || prefix.back() == '.' ? prefix : prefix + ".";
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// "the file has a, b, c (N tensors)", and the prefixes under which a module would be found:
// the usual mistake is a prefix that does not match the larger model's names.
std::string describe_contents(const SafetensorsFile& f) {
  const std::vector<std::string> names = f.tensor_names();
  std::string s = "the file has " + std::to_string(names.size()) + " tensors";
  for (std::size_t i = 0; i < names.size() && i < 8; ++i) s += (i == 0 ? ": " : ", ") + names[i];
  if (names.size() > 8) s += ", ...";
  std::string prefixes;
  for (const std::string& name : names) {
    for (const char* tail : {"queries.weight", "in_proj_weight"}) {
      if (ends_with(name, tail)) {
        prefixes += (prefixes.empty() ? "" : ", ") + std::string("'") +
                    name.substr(0, name.size() - std::strlen(tail)) + "'";
      }
    }
  }
  if (!prefixes.empty()) s += "; modules found under prefix " + prefixes;
  return s;
}

class ParameterReader {
 public:
  ParameterReader(const SafetensorsFile& f, const std::string& prefix)
      : f_(f), prefix_(with_dot(prefix)) {}

  bool has(const std::string& name) const { return f_.contains(prefix_ + name); }

  const SafetensorsEntry& require(const std::string& name, const char* module) const {
    if (!has(name)) {
      fail(f_.name(),
           "missing tensor '" + prefix_ + name + "' of " + module + "; " + describe_contents(f_));
    }
    return f_.entry(prefix_ + name);
  }

  std::vector<float> read(const std::string& name, const std::vector<std::size_t>& shape,
                          const char* module, std::size_t e) const {
    const SafetensorsEntry& entry = require(name, module);
    if (entry.shape != shape) {
      fail(f_.name(), "wrong shape: tensor '" + prefix_ + name + "' is " + shape_text(entry.shape) +
                          ", " + module + " with embed size " + std::to_string(e) + " needs " +
                          shape_text(shape));
    }
    if (!is_float_dtype(entry.dtype)) {
      fail(f_.name(), "wrong dtype: tensor '" + prefix_ + name + "' is " + entry.dtype +
                          ", expected F32, F16 or BF16 (in PyTorch, .float() before saving)");
    }
    return f_.read_float(prefix_ + name);
  }

  const std::string& prefix() const { return prefix_; }

 private:
  const SafetensorsFile& f_;
  std::string prefix_;
};

// Splits a stacked [3E, ...] tensor into its query, key and value thirds.
void split_in_three(const std::vector<float>& stacked, std::vector<float>* parts) {
  const std::size_t third = stacked.size() / 3;
  for (std::size_t i = 0; i < 3; ++i) {
    parts[i].assign(stacked.begin() + i * third, stacked.begin() + (i + 1) * third);
  }
}

// Reads every parameter before anything is committed. `module_e` is the module's embed size and
// `module_kv_e` its key/value projections' out features, or 0 to take them from the file.
Parameters read_parameters(const SafetensorsFile& f, const std::string& prefix,
                           std::size_t module_e, std::size_t module_kv_e) {
  const ParameterReader r(f, prefix);
  const char* kTutorial = "the tutorial's SelfAttention";
  const char* kTorch = "nn.MultiheadAttention";
  const bool tutorial = r.has("queries.weight") || r.has("keys.weight") || r.has("values.weight") ||
                        r.has("fc_out.weight");
  const bool torch_mha = r.has("in_proj_weight") || r.has("out_proj.weight");
  if (tutorial && torch_mha) {
    fail(f.name(), "ambiguous module: prefix '" + r.prefix() +
                       "' has both the tutorial's names (queries.weight, ...) and "
                       "nn.MultiheadAttention's (in_proj_weight, ...)");
  }
  if (!tutorial && !torch_mha) {
    fail(f.name(), "missing tensor: no '" + r.prefix() + "queries.weight' (" + kTutorial +
                       ") nor '" + r.prefix() + "in_proj_weight' (" + kTorch + "); " +
                       describe_contents(f));
  }
  if (torch_mha && (r.has("bias_k") || r.has("bias_v"))) {
    fail(f.name(), "unsupported module: '" + r.prefix() +
                       "bias_k' and 'bias_v' are nn.MultiheadAttention(add_bias_kv=True), "
                       "which simdattn does not implement");
  }
  if (torch_mha && !r.has("in_proj_weight") && r.has("q_proj_weight")) {
    fail(f.name(), "unsupported module: '" + r.prefix() +
                       "q_proj_weight' is nn.MultiheadAttention with kdim/vdim != embed_dim; "
                       "simdattn's projections are E -> E");
  }
  const char* module = tutorial ? kTutorial : kTorch;
  // Both layouts have an [E, E] output projection: E comes from it.
  const std::string out_name = tutorial ? "fc_out.weight" : "out_proj.weight";
  const SafetensorsEntry& out = r.require(out_name, module);
  if (out.shape.size() != 2 || out.shape[0] != out.shape[1] || out.shape[0] == 0) {
    fail(f.name(), "wrong shape: tensor '" + r.prefix() + out_name + "' is " +
                       shape_text(out.shape) + ", expected [E, E] with E > 0");
  }
  Parameters p;
  p.e = out.shape[0];
  if (module_e != 0 && p.e != module_e) {
    fail(f.name(), "embed size mismatch: tensor '" + r.prefix() + out_name + "' is " +
                       shape_text(out.shape) + " (E = " + std::to_string(p.e) +
                       ") but the module has embed_size " + std::to_string(module_e));
  }
  const std::size_t e = p.e;
  if (tutorial) {
    // Grouped-query attention: keys and values project to kv_heads x head_dim features.
    const SafetensorsEntry& keys = r.require("keys.weight", module);
    p.kv_e = keys.shape.size() == 2 && keys.shape[0] != 0 ? keys.shape[0] : e;
    if (module_kv_e != 0 && p.kv_e != module_kv_e) {
      fail(f.name(), "wrong shape: tensor '" + r.prefix() + "keys.weight' is " +
                         shape_text(keys.shape) + ", the module's key projection is [kv_heads * " +
                         "head_dim, E] = [" + std::to_string(module_kv_e) + ", " +
                         std::to_string(e) + "]");
    }
    const char* names[] = {"queries", "keys", "values", "fc_out"};
    for (int i = 0; i < 4; ++i) {
      const std::string base = names[i];
      const std::size_t out_features = i == 1 || i == 2 ? p.kv_e : e;
      p.weight[i] = r.read(base + ".weight", {out_features, e}, module, e);
      if (r.has(base + ".bias")) p.bias[i] = r.read(base + ".bias", {out_features}, module, e);
    }
    return p;
  }
  p.kv_e = e;
  if (module_kv_e != 0 && module_kv_e != e) {
    fail(f.name(),
         "unsupported module: nn.MultiheadAttention has no grouped-query attention, "
         "and the module's key projection has " +
             std::to_string(module_kv_e) + " out features, not E = " + std::to_string(e));
  }
  split_in_three(r.read("in_proj_weight", {3 * e, e}, module, e), p.weight);
  if (r.has("in_proj_bias")) split_in_three(r.read("in_proj_bias", {3 * e}, module, e), p.bias);
  p.weight[3] = r.read("out_proj.weight", {e, e}, module, e);
  if (r.has("out_proj.bias")) p.bias[3] = r.read("out_proj.bias", {e}, module, e);
  return p;
}

// The metadata's "<prefix>heads", if any, must agree with the module's heads.
void check_count(const SafetensorsFile& f, const std::string& prefix, const char* name,
                 std::size_t heads) {
  const std::string key = with_dot(prefix) + name;
  const auto it = f.metadata().find(key);
  if (it == f.metadata().end()) return;
  const std::string& text = it->second;
  std::size_t value = 0;
  const bool digits =
      !text.empty() && text.size() < 19 &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits) value = std::stoull(text);
  if (!digits || value != heads) {
    fail(f.name(), std::string(name) + " mismatch: the metadata has \"" + key + "\": \"" + text +
                       "\" but the module has " + name + " = " + std::to_string(heads));
  }
}

// The metadata's "<prefix>heads" and "<prefix>kv_heads", if any, must agree with the module.
void check_heads(const SafetensorsFile& f, const std::string& prefix, std::size_t heads,
                 std::size_t kv_heads) {
  check_count(f, prefix, "heads", heads);
  check_count(f, prefix, "kv_heads", kv_heads);
}

// Strong guarantee: the module changes only once every setter has succeeded on a copy.
void commit(MultiHeadAttention& module, const Parameters& p) {
  MultiHeadAttention next(module);
  for (int i = 0; i < 4; ++i) {
    next.set_weight(kProjections[i], p.weight[i]);
    if (p.bias[i].empty()) {
      next.clear_bias(kProjections[i]);
    } else {
      next.set_bias(kProjections[i], p.bias[i]);
    }
  }
  module = std::move(next);
}

}  // namespace

void load_weights(MultiHeadAttention& module, const SafetensorsFile& file,
                  const std::string& prefix) {
  detail::ModuleAccess::impl(module, "load_weights");  // refuses a moved-from module first
  const Parameters p =
      read_parameters(file, prefix, module.embed_size(), module.kv_heads() * module.head_dim());
  check_heads(file, prefix, module.heads(), module.kv_heads());
  commit(module, p);
}

void load_weights(MultiHeadAttention& module, const std::string& path, const std::string& prefix) {
  load_weights(module, SafetensorsFile::open(path), prefix);
}

MultiHeadAttention load_multi_head_attention(const SafetensorsFile& file, std::size_t heads,
                                             const std::string& prefix) {
  if (heads == 0) {
    throw std::invalid_argument("simdattn::load_multi_head_attention: heads must be > 0, got 0");
  }
  const Parameters p = read_parameters(file, prefix, 0, 0);
  if (p.e % heads != 0) {
    fail(file.name(), "embed size " + std::to_string(p.e) +
                          " is not divisible by heads = " + std::to_string(heads));
  }
  const std::size_t d = p.e / heads;
  const std::size_t kv_heads = p.kv_e / d;
  if (p.kv_e % d != 0 || heads % kv_heads != 0) {
    fail(file.name(), "key/value projections of " + std::to_string(p.kv_e) +
                          " out features are not kv_heads x head_dim with kv_heads dividing "
                          "heads = " +
                          std::to_string(heads) + " (head_dim " + std::to_string(d) + ")");
  }
  check_heads(file, prefix, heads, kv_heads);
  MultiHeadAttention module(p.e, heads, KvHeads{kv_heads});
  commit(module, p);
  return module;
}

MultiHeadAttention load_multi_head_attention(const std::string& path, std::size_t heads,
                                             const std::string& prefix) {
  return load_multi_head_attention(SafetensorsFile::open(path), heads, prefix);
}

}  // namespace simdattn
