// simdattn: weights trained in PyTorch, loaded from safetensors files.
//
// safetensors (https://github.com/huggingface/safetensors) is the file format PyTorch users
// exchange weights in: an 8-byte little-endian header length, a JSON header mapping each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__"
// object of strings), then the raw little-endian tensor bytes. The README's "From PyTorch to
// simdattn" writes such a file in a few lines of Python without the `safetensors` package.
//
//     #include "simdattn/safetensors.hpp"
//     // A new module from the file (embed size from the shapes):
//     auto attn = simdattn::load_multi_head_attention("model.safetensors", /*heads=*/8);
//     // Or into an existing module, from a module inside a larger model:
//     simdattn::load_weights(attn, "model.safetensors", "encoder.layers.0.self_attn.");
//
// Every failure of the file throws SafetensorsError (a std::runtime_error) whose message names the
// file and the problem; a module is never left half-updated. Wrong arguments of the calls
// themselves (a null buffer, heads = 0) throw std::invalid_argument, as elsewhere. The loader needs
// nlohmann-json at build time (Debian: nlohmann-json3-dev); a library built without it throws
// SafetensorsError saying so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "simdattn/multi_head_attention.hpp"

namespace simdattn {

/// A safetensors file that cannot be read, or whose tensors do not fit: truncated file, header
/// length past the end, invalid JSON or header, out-of-range or overlapping data offsets,
/// missing tensor, wrong shape or dtype, embed size or heads that do not match the module.
/// what() is "simdattn: safetensors '<file name>': <problem>".
class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One tensor's header entry.
struct SafetensorsEntry {
  std::string dtype;               ///< as written: "F32", "F16", "BF16", "F64", "U8", "BOOL", ...
  std::vector<std::size_t> shape;  ///< [] is a scalar
  std::size_t begin = 0;           ///< byte range [begin, end) in the data section
  std::size_t end = 0;
  std::size_t numel() const;
};

/// A validated safetensors header, and the tensors read on demand.
///
/// Opening checks the whole header, not only the tensors one will read: each entry has a
/// dtype, a shape of non-negative integers and a data range that lies inside the file, is as
/// long as the dtype and shape need (for the dtypes listed in SafetensorsEntry::dtype) and
/// overlaps no other tensor. Gaps between tensors are allowed. Reads are const and may run
/// from several threads at once.
class SafetensorsFile {
 public:
  /// Reads and validates the header of the file at `path`; tensors are read from the file when
  /// asked for, so the file must not change while this object is in use.
  static SafetensorsFile open(const std::string& path);
  /// A safetensors file already in memory (a fuzzer's input, an embedded resource). Does not
  /// copy: `data` must stay valid and unchanged while this object is in use. `name` stands for
  /// the file in error messages. A null `data` with a nonzero size is an
  /// std::invalid_argument.
  static SafetensorsFile from_memory(const void* data, std::size_t size, std::string name);

  /// The path, or the name given to from_memory().
  const std::string& name() const noexcept { return name_; }
  /// The header's "__metadata__" (empty if it has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Every tensor name, sorted.
  std::vector<std::string> tensor_names() const;
  bool contains(const std::string& tensor) const { return entries_.count(tensor) != 0; }
  /// The tensor's entry; throws SafetensorsError if the file has no such tensor.
  const SafetensorsEntry& entry(const std::string& tensor) const;

  /// The tensor as float32, converting F16 and BF16 exactly; any other dtype throws.
  std::vector<float> read_float(const std::string& tensor) const;
  /// The tensor as float64 from F64, F32, F16 or BF16 (all exact); any other dtype throws.
  std::vector<double> read_double(const std::string& tensor) const;
  /// The tensor's bytes as stored (little-endian), for any dtype: U8 or BOOL masks, say.
  std::vector<std::uint8_t> read_bytes(const std::string& tensor) const;

 private:
  SafetensorsFile() = default;
  void read_range(std::size_t begin, std::size_t bytes, void* out) const;

  std::string name_;
  std::string path_;                      // empty for from_memory()
  const std::uint8_t* memory_ = nullptr;  // the whole file, for from_memory()
  std::size_t data_start_ = 0;            // 8 + header length
  std::size_t data_size_ = 0;             // bytes after the header
  std::map<std::string, std::string> metadata_;
  std::map<std::string, SafetensorsEntry> entries_;
};

/// Sets every weight and bias of `module` from the tensors named `prefix` + a PyTorch name:
///
///   the tutorial's SelfAttention      queries.weight [E, E], keys.weight, values.weight
///                                     [kv_heads * head_dim, E] (= [E, E] without grouped-query
///                                     attention), fc_out.weight [E, E], fc_out.bias [E]
///                                     (queries.bias, keys.bias, values.bias if present)
///   torch.nn.MultiheadAttention       in_proj_weight [3E, E] (query, key, value rows),
///                                     in_proj_bias [3E], out_proj.weight [E, E],
///                                     out_proj.bias [E]
///
/// The names tell which module the file holds (both at once is an error). Biases the file lacks
/// are removed (the output bias becomes zeros), so the module computes what the PyTorch module
/// did. `prefix` selects a module inside a larger model's state dict, e.g.
/// "encoder.layers.0.self_attn" (a missing trailing '.' is added). Tensors are F32, or F16/BF16
/// converted to float32 exactly. If the metadata has "<prefix>heads" (the README's export writes
/// "heads") or "<prefix>kv_heads", it must equal module.heads() or module.kv_heads(). The key and
/// value weights must have the module's kv_heads() x head_dim() rows. nn.MultiheadAttention with
/// add_bias_kv or with kdim/vdim != embed_dim has no simdattn equivalent and is refused.
///
/// Throws SafetensorsError naming the file and the problem; `module` is unchanged then.
/// std::invalid_argument if `module` was moved from.
void load_weights(MultiHeadAttention& module, const SafetensorsFile& file,
                  const std::string& prefix = "");
/// SafetensorsFile::open(path), then the above.
void load_weights(MultiHeadAttention& module, const std::string& path,
                  const std::string& prefix = "");

/// A new module with `heads` heads, its embed size and kv_heads (grouped-query attention: the
/// rows of keys.weight over head_dim) taken from the tensors' shapes and every parameter from
/// the file, as load_weights() reads them. Throws std::invalid_argument if heads
/// is 0, SafetensorsError if the file's embed size is not divisible by heads, its key/value
/// rows are not a number of heads dividing heads, the metadata's "<prefix>heads" or
/// "<prefix>kv_heads" disagree, or on any problem load_weights() reports.
MultiHeadAttention load_multi_head_attention(const SafetensorsFile& file, std::size_t heads,
                                             const std::string& prefix = "");
MultiHeadAttention load_multi_head_attention(const std::string& path, std::size_t heads,
                                             const std::string& prefix = "");

}  // namespace simdattn
