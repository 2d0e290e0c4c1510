#!/usr/bin/python3
"""Writes the PyTorch golden fixtures of tests/data/ (run with Debian's python3-torch).

Every case is one safetensors file holding the module's weights under PyTorch's names, the
inputs, the keep-mask (uint8, 0 = masked) and the expected output computed in float64, plus a
manifest (tests/data/manifest.json) that lists the cases. tests/test_golden.cpp reads them
without Python. Weights and inputs are drawn in float32 and the float64 computation uses
exactly those values, so the expectation is exact for what the C++ test feeds in.

The script is deterministic: rerunning it on one machine leaves `git diff --stat tests/data`
empty. Another CPU's float64 kernels may round the last bit of an expectation differently
(relative 2e-16, far inside the tests' 1e-5), so after adding or changing cases rewrite only
those with --only; the other files stay as they are and the manifest lists their hashes.

    /usr/bin/python3 tools/make_golden.py [--out tests/data] [--only CASE ...]

Tensors of a case file (E = embed size):
  weights       tutorial: queries.weight, keys.weight, values.weight, fc_out.weight, fc_out.bias
                nn.MultiheadAttention: in_proj_weight, in_proj_bias, out_proj.weight,
                out_proj.bias (under metadata["prefix"], as inside a larger model)
  query         F32 [N, Lq, E]; keys and values F32 [N, Lk, E] unless metadata["inputs"] says
                that they are the query tensor ("self") or one tensor ("shared_kv": values)
  mask          U8 [N|1, H|1, Lq|1, Lk|1], if the case has one
  attn_mask     F32 additive float mask, if the case has one, in the shape PyTorch took it:
                nn.MultiheadAttention's [Lq, Lk] or [N * H, Lq, Lk] (row b * H + h), or for the
                tutorial's math [N|1, H|1, Lq|1, Lk], added to the scaled scores; -inf hides a key
  key_padding_mask
                U8 [N, Lk], PyTorch's convention (nonzero = padding), if the case has one
  expected.<s>  F64 [N, Lq, E] for scale convention s: "scale_embed" (the tutorial's
                energy / sqrt(E)) or "scale_head_dim" (1 / sqrt(E / H), nn.MultiheadAttention)
  weights.<s>   F64 [N, H, Lq, Lk], the attention probabilities (need_weights=True,
                average_attn_weights=False), in the cases that hold them
  weights_averaged.<s>
                F64 [N, Lq, Lk], their mean over the heads (average_attn_weights=True)

Gradient cases (files grad_*.safetensors; metadata["scale"] names their one convention) also
hold what autograd computes in float64 for the loss sum(out * grad.out):
  grad.out      F32 [N, Lq, E], the output gradient fed to the backward pass
  grad.query, grad.keys, grad.values
                F64, one per stored input tensor: for "self" only grad.query (the sum of the
                three uses), for "shared_kv" grad.query and grad.values (keys and values summed)
  grad.<param>  F64, the gradient of every parameter under its PyTorch name
"""

import argparse
import hashlib
import json
import os
import struct
import sys
import zlib

try:
    import torch
    from torch import nn
except ImportError:
    sys.exit("make_golden.py needs PyTorch: apt-get install python3-torch (run it with "
             "/usr/bin/python3). The tests need only tests/data, which holds its output.")

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


class SelfAttention(nn.Module):
    """The tutorial's module: bias-free E -> E projections of the full embedding, fc_out with bias."""

    def __init__(self, embed_size, heads):
        super().__init__()
        self.embed_size = embed_size
        self.heads = heads
        self.head_dim = embed_size // heads
        assert self.head_dim * heads == embed_size, "Embed size needs to be divisible by heads"
        self.values = nn.Linear(embed_size, embed_size, bias=False)
        self.keys = nn.Linear(embed_size, embed_size, bias=False)
        self.queries = nn.Linear(embed_size, embed_size, bias=False)
        self.fc_out = nn.Linear(embed_size, embed_size)

    def forward(self, values, keys, query, mask, scale="scale_embed", return_attention=False,
                bias=None):
        n = query.shape[0]
        value_len, key_len, query_len = values.shape[1], keys.shape[1], query.shape[1]
        values = self.values(values).reshape(n, value_len, self.heads, self.head_dim)
        keys = self.keys(keys).reshape(n, key_len, self.heads, self.head_dim)
        queries = self.queries(query).reshape(n, query_len, self.heads, self.head_dim)
        energy = torch.einsum("nqhd,nkhd->nhqk", [queries, keys])
        if mask is not None:
            energy = energy.masked_fill(mask == 0, float("-1e20"))
        divisor = self.embed_size if scale == "scale_embed" else self.head_dim
        energy = energy / (divisor ** (1 / 2))
        if bias is not None:  # a float attn_mask: added to the scaled scores, as PyTorch does
            energy = energy + bias
        attention = torch.softmax(energy, dim=3)
        out = torch.einsum("nhql,nlhd->nqhd", [attention, values]).reshape(
            n, query_len, self.heads * self.head_dim)
        out = self.fc_out(out)
        return (out, attention) if return_attention else out


# safetensors without the `safetensors` package (Debian lacks it): an 8-byte little-endian
# header length, the JSON header (padded with spaces to 8 bytes), then the raw tensors.
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.uint8: "U8"}
SAME_SIZE_INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16}


def tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype in SAME_SIZE_INT:  # numpy has no bfloat16: copy the bits as int16
        t = t.view(SAME_SIZE_INT[t.dtype])
    return t.numpy().tobytes()


def safetensors_bytes(tensors, metadata):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def seed_for(name):
    """Each case draws from its own seed, so that adding a case changes no other file."""
    torch.manual_seed(zlib.crc32(name.encode()))


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def draw_inputs(n, lq, lk, e, inputs, scale=1.0):
    """query, keys, values and the tensors that store them: "self" stores the query only,
    "shared_kv" the query and values (keys = values), "distinct" all three."""
    query = randn(n, lq, e) * scale
    keys = query if inputs == "self" else randn(n, lk, e) * scale
    values = keys if inputs in ("self", "shared_kv") else randn(n, lk, e) * scale
    tensors = {"query": query}
    if inputs != "self":
        tensors["values"] = values
    if inputs == "distinct":
        tensors["keys"] = keys
    return query, keys, values, tensors


def keep_tril(lq, lk):
    return torch.tril(torch.ones(lq, lk, dtype=torch.uint8)).reshape(1, 1, lq, lk)


def keep_lengths(lengths, lk):
    """Key-padding keep-mask [N, 1, 1, Lk]: batch b sees its first lengths[b] keys."""
    keep = torch.zeros(len(lengths), 1, 1, lk, dtype=torch.uint8)
    for b, length in enumerate(lengths):
        keep[b, 0, 0, :length] = 1
    return keep


def tutorial_case(name, description, n, lq, lk, e, heads, inputs, mask=None, input_scale=1.0):
    seed_for(name)
    model = SelfAttention(e, heads)  # float32 parameters, drawn as nn.Linear does
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs, input_scale)
    tensors.update(model.state_dict())
    double = SelfAttention(e, heads).double()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    mask64 = None if mask is None else mask.double()
    with torch.no_grad():
        for scale in ("scale_embed", "scale_head_dim"):
            out, attention = double(values.double(), keys.double(), query.double(), mask64,
                                    scale, return_attention=True)
            tensors["expected." + scale] = out
            check_fully_masked_rows(name, attention, mask, n, heads, lq, lk)
    if mask is not None:
        tensors["mask"] = mask
    return case_file(name, description, "SelfAttention", heads, inputs, tensors, mask, "")


def check_fully_masked_rows(name, attention, mask, n, heads, lq, lk):
    """simdattn's MaskedRows::uniform is the tutorial's behaviour: check the fixture shows it."""
    if mask is None:
        return
    full = (mask.expand(n, heads, lq, lk) == 0).all(dim=3)
    if full.any():
        uniform = torch.full((lk,), 1.0 / lk, dtype=torch.float64)
        for idx in full.nonzero():
            row = attention[tuple(idx.tolist())]
            assert torch.allclose(row, uniform, rtol=0, atol=1e-15), (name, idx, row)


def leaves_for(query, keys, values, inputs):
    """float64 leaves that require gradients, aliased as the float32 inputs are: autograd then
    sums the gradients of a tensor passed more than once, as simdattn must."""
    q = query.double().requires_grad_()
    k = q if inputs == "self" else keys.double().requires_grad_()
    v = k if inputs in ("self", "shared_kv") else values.double().requires_grad_()
    stored = {"query": q}
    if inputs != "self":
        stored["values"] = v
    if inputs == "distinct":
        stored["keys"] = k
    return q, k, v, stored


def add_gradients(tensors, out, grad_out, stored, module):
    (out * grad_out.double()).sum().backward()
    for name, leaf in stored.items():
        tensors["grad." + name] = leaf.grad
    for name, param in module.named_parameters():
        tensors["grad." + name] = param.grad
    for k, v in tensors.items():
        if k.startswith("grad."):
            assert torch.isfinite(v).all(), k


def tutorial_grad_case(name, description, n, lq, lk, e, heads, inputs, mask=None,
                       scale="scale_embed"):
    """The tutorial's module, its output and its gradients for one scale convention."""
    seed_for(name)
    model = SelfAttention(e, heads)
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs)
    grad_out = randn(n, lq, e)
    tensors.update(model.state_dict())
    tensors["grad.out"] = grad_out
    double = SelfAttention(e, heads).double()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    q, k, v, stored = leaves_for(query, keys, values, inputs)
    out = double(v, k, q, None if mask is None else mask.double(), scale)
    tensors["expected." + scale] = out.detach()
    add_gradients(tensors, out, grad_out, stored, double)
    if mask is not None:
        tensors["mask"] = mask
    return case_file(name, description, "SelfAttention", heads, inputs, tensors, mask, "",
                     scale)


def mha_grad_case(name, description, n, lq, lk, e, heads, inputs, lengths):
    """nn.MultiheadAttention in training mode (dropout 0): its Q/K/V biases get gradients."""
    seed_for(name)
    model = nn.MultiheadAttention(e, heads, batch_first=True)
    with torch.no_grad():
        model.in_proj_bias.uniform_(-0.5, 0.5)
        model.out_proj.bias.uniform_(-0.5, 0.5)
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs)
    grad_out = randn(n, lq, e)
    tensors.update(model.state_dict())
    tensors["grad.out"] = grad_out
    double = nn.MultiheadAttention(e, heads, batch_first=True).double().train()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    mask = keep_lengths(lengths, lk)
    q, k, v, stored = leaves_for(query, keys, values, inputs)
    out, _ = double(q, k, v, key_padding_mask=(mask.reshape(n, lk) == 0), need_weights=False)
    tensors["expected.scale_head_dim"] = out.detach()
    add_gradients(tensors, out, grad_out, stored, double)
    tensors["mask"] = mask
    return case_file(name, description, "MultiheadAttention", heads, inputs, tensors, mask, "",
                     "scale_head_dim")


def mha_case(name, description, n, lq, lk, e, heads, inputs, lengths=None, prefix=""):
    seed_for(name)
    model = nn.MultiheadAttention(e, heads, batch_first=True)
    with torch.no_grad():  # PyTorch zero-initialises both biases: draw them so they count
        model.in_proj_bias.uniform_(-0.5, 0.5)
        model.out_proj.bias.uniform_(-0.5, 0.5)
    model.eval()
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs)
    double = nn.MultiheadAttention(e, heads, batch_first=True).double().eval()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    mask = None if lengths is None else keep_lengths(lengths, lk)
    padding = None if mask is None else (mask.reshape(n, lk) == 0)
    with torch.no_grad():
        out, _ = double(query.double(), keys.double(), values.double(),
                        key_padding_mask=padding, need_weights=False)
    tensors.update({prefix + k: v for k, v in model.state_dict().items()})
    # An unrelated tensor of the larger model: the loader must pick its module by prefix.
    tensors[prefix.replace("self_attn.", "") + "norm1.weight"] = torch.ones(e)
    tensors["expected.scale_head_dim"] = out
    if mask is not None:
        tensors["mask"] = mask
    return case_file(name, description, "MultiheadAttention", heads, inputs, tensors, mask, prefix)


def float_mask(shape, hidden):
    """A float attn_mask of normal draws whose entries at the `hidden` index tuples are -inf."""
    bias = randn(*shape)
    for idx in hidden:
        bias[idx] = float("-inf")
    return bias


def check_rows_see_a_key(name, hidden):
    """PyTorch returns NaN for a row with no visible key (simdattn a MaskedRows policy): the
    nn.MultiheadAttention fixtures must have none. hidden: bool [N, H, Lq, Lk]."""
    assert not hidden.all(dim=3).any(), name


def mha_weights_case(name, description, n, lq, lk, e, heads, inputs, attn_mask, lengths=None):
    """nn.MultiheadAttention with a float attn_mask (added to the scaled scores), an optional
    key_padding_mask, and need_weights=True: the output and the weights per head and averaged."""
    seed_for(name)
    model = nn.MultiheadAttention(e, heads, batch_first=True)
    with torch.no_grad():
        model.in_proj_bias.uniform_(-0.5, 0.5)
        model.out_proj.bias.uniform_(-0.5, 0.5)
    model.eval()
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs)
    bias = attn_mask()  # drawn after the inputs, from the case's seed
    double = nn.MultiheadAttention(e, heads, batch_first=True).double().eval()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    padding = None
    hidden = torch.isinf(bias.reshape(-1, heads, lq, lk) if bias.dim() == 3 else bias)
    hidden = hidden.expand(n, heads, lq, lk)
    if lengths is not None:
        padding = torch.ones(n, lk, dtype=torch.bool)
        for b, length in enumerate(lengths):
            padding[b, :length] = False
        hidden = hidden | padding.reshape(n, 1, 1, lk)
        tensors["key_padding_mask"] = padding.to(torch.uint8)
    check_rows_see_a_key(name, hidden)
    with torch.no_grad():
        for average, key in ((False, "weights"), (True, "weights_averaged")):
            out, weights = double(query.double(), keys.double(), values.double(),
                                  key_padding_mask=padding, need_weights=True,
                                  attn_mask=bias.double(), average_attn_weights=average)
            tensors[key + ".scale_head_dim"] = weights
    tensors.update(model.state_dict())
    tensors["attn_mask"] = bias
    tensors["expected.scale_head_dim"] = out
    return case_file(name, description, "MultiheadAttention", heads, inputs, tensors, None, "")


def tutorial_weights_case(name, description, n, lq, lk, e, heads, inputs, mask, bias):
    """The tutorial's math with a float bias [N|1, H|1, Lq|1, Lk] added to the scaled scores
    (finite: its rows fully masked by the keep-mask stay uniform, as simdattn's are), and the
    attention it returns, per head and averaged, for both scale conventions."""
    seed_for(name)
    model = SelfAttention(e, heads)
    query, keys, values, tensors = draw_inputs(n, lq, lk, e, inputs)
    bias = bias()
    assert torch.isfinite(bias).all(), name
    tensors.update(model.state_dict())
    double = SelfAttention(e, heads).double()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        for scale in ("scale_embed", "scale_head_dim"):
            out, attention = double(values.double(), keys.double(), query.double(),
                                    mask.double(), scale, return_attention=True,
                                    bias=bias.double())
            check_fully_masked_rows(name, attention, mask, n, heads, lq, lk)
            tensors["expected." + scale] = out
            tensors["weights." + scale] = attention
            tensors["weights_averaged." + scale] = attention.mean(dim=1)
    tensors["mask"] = mask
    tensors["attn_mask"] = bias
    return case_file(name, description, "SelfAttention", heads, inputs, tensors, mask, "")


def case_file(name, description, module, heads, inputs, tensors, mask, prefix, scale=None):
    query = tensors["query"]
    meta = {"case": name, "description": description, "module": module, "heads": str(heads),
            "inputs": inputs, "prefix": prefix}
    if scale is not None:
        meta["scale"] = scale
    if mask is not None and mask.shape[0] == 1 and mask.shape[1] == 1 and torch.equal(
            mask, keep_tril(mask.shape[2], mask.shape[3])):
        meta["mask_equals_causal"] = "top_left"  # the same case again through Options::causal
    for k, v in tensors.items():
        if k.startswith(("expected.", "weights")):
            assert torch.isfinite(v).all(), (name, k)
    info = {"file": name + ".safetensors", "description": description, "module": module,
            "N": query.shape[0], "Lq": query.shape[1],
            "Lk": tensors.get("values", query).shape[1], "E": query.shape[2], "heads": heads,
            "inputs": inputs, "mask": None if mask is None else list(mask.shape),
            "prefix": prefix, "expected": sorted(k for k in tensors if k.startswith("expected."))}
    for extra in ("attn_mask", "key_padding_mask"):
        if extra in tensors:
            info[extra] = list(tensors[extra].shape)
    weights = sorted(k for k in tensors if k.startswith("weights"))
    if weights:
        info["weights"] = weights
    gradients = sorted(k for k in tensors if k.startswith("grad."))
    if gradients:
        info["gradients"] = gradients
    return name, safetensors_bytes(tensors, meta), info


def dtypes_file():
    """A tutorial module in BF16 and F16 next to the exact float32 values of both, and special
    values (subnormals, infinities, NaN, -0, extremes), to check the loader's conversions."""
    seed_for("dtypes")
    model = SelfAttention(16, 2)
    tensors = {}
    for tag, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        for k, v in model.state_dict().items():
            low = v.to(dtype)
            tensors[tag + "." + k] = low
            tensors[tag + "_as_f32." + k] = low.to(torch.float32)
    specials16 = torch.tensor([0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xC100, 0x7BFF,
                               0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x3555, 0x8001],
                              dtype=torch.int32).to(torch.int16)
    specialsbf = torch.tensor([0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x3F80, 0xC020, 0x7F7F,
                               0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0x4049, 0x8001],
                              dtype=torch.int32).to(torch.int16)
    tensors["specials.f16"] = specials16.view(torch.float16)
    tensors["specials.f16_as_f32"] = specials16.view(torch.float16).to(torch.float32)
    tensors["specials.bf16"] = specialsbf.view(torch.bfloat16)
    tensors["specials.bf16_as_f32"] = specialsbf.view(torch.bfloat16).to(torch.float32)
    meta = {"description": "dtype conversions by PyTorch: <tag>.<name> next to <tag>_as_f32.<name>",
            "heads": "2"}
    info = {"file": "dtypes.safetensors", "description": meta["description"]}
    return "dtypes", safetensors_bytes(tensors, meta), info


def all_cases():
    yield tutorial_case("quick_start", "the tutorial's quick start: x [1, 2, 256], H = 8",
                        1, 2, 2, 256, 8, "self")
    yield tutorial_case("cross_attention",
                        "the tutorial's cross-attention: keys/values length 20, query length 10",
                        2, 10, 20, 64, 8, "shared_kv")
    yield tutorial_case("causal", "lower-triangular mask [1, 1, L, L]",
                        2, 13, 13, 48, 6, "self", mask=keep_tril(13, 13))
    yield tutorial_case("key_padding", "key-padding mask [N, 1, 1, Lk], N = 3, lengths 11, 6, 1",
                        3, 11, 11, 40, 5, "self", mask=keep_lengths([11, 6, 1], 11))
    full = (torch.rand(2, 4, 7, 9, generator=torch.Generator().manual_seed(7)) > 0.35).to(torch.uint8)
    full[0, 1, 2, :] = 0
    full[1, 3, 6, :] = 0
    full[1, :, 0, :] = 0
    yield tutorial_case("fully_masked_rows",
                        "full [N, H, Lq, Lk] random mask with fully masked rows (uniform average)",
                        2, 7, 9, 32, 4, "distinct", mask=full)
    yield tutorial_case("head_dim_15", "head_dim 15 (E = 60, H = 4), key padding",
                        2, 9, 9, 60, 4, "self", mask=keep_lengths([9, 5], 9))
    yield tutorial_case("head_dim_3", "head_dim 3 (E = 12, H = 4), tril mask with Lq != Lk",
                        1, 5, 17, 12, 4, "distinct", mask=keep_tril(5, 17))
    yield tutorial_case("inputs_1e3", "inputs scaled by 1e3 (saturated softmax), causal",
                        2, 8, 8, 32, 4, "self", mask=keep_tril(8, 8), input_scale=1e3)
    yield mha_case("mha_cross", "nn.MultiheadAttention, cross-attention Lq = 10, Lk = 20",
                   2, 10, 20, 32, 4, "distinct")
    yield mha_case("mha_key_padding",
                   "nn.MultiheadAttention inside a model (prefix), key padding N = 3",
                   3, 11, 11, 40, 5, "self", lengths=[11, 4, 8],
                   prefix="encoder.layers.0.self_attn.")
    # Float attn_mask (additive bias) and need_weights.
    yield mha_weights_case(
        "mha_float_mask",
        "nn.MultiheadAttention, self-attention, head_dim 15 (E = 30, H = 2), float attn_mask "
        "[L, L] with -inf entries, key padding lengths 6, 4, need_weights",
        2, 6, 6, 30, 2, "self", lambda: float_mask((6, 6), [(0, 3), (2, 0), (2, 1), (5, 2)]),
        lengths=[6, 4])
    yield mha_weights_case(
        "mha_float_mask_cross",
        "nn.MultiheadAttention, cross-attention Lq = 5, Lk = 7 (E = 12, H = 3), float attn_mask "
        "[N * H, Lq, Lk] with -inf entries, key padding lengths 7, 3, need_weights",
        2, 5, 7, 12, 3, "distinct",
        lambda: float_mask((6, 5, 7), [(0, 0, 6), (1, 4, 0), (1, 4, 1), (4, 2, 0), (5, 0, 2)]),
        lengths=[7, 3])
    keep = torch.ones(2, 1, 4, 5, dtype=torch.uint8)
    keep[0, 0, 1, :] = 0
    keep[1, 0, 3, 2:] = 0
    yield tutorial_weights_case(
        "bias_weights",
        "the tutorial's math with a float bias [1, H, 1, Lk], head_dim 3 (E = 12, H = 4), "
        "keep-mask [N, 1, Lq, Lk] with a fully masked row, attention weights",
        2, 4, 5, 12, 4, "distinct", keep, lambda: randn(1, 4, 1, 5) * 2)
    yield dtypes_file()
    # Gradients (the training fixtures), the tutorial's scale unless said otherwise.
    yield tutorial_grad_case("grad_self", "gradients: self-attention, x [2, 6, 32], H = 4",
                             2, 6, 6, 32, 4, "self")
    yield tutorial_grad_case("grad_cross",
                             "gradients: cross-attention, one encoder tensor for keys and values",
                             2, 5, 9, 32, 4, "shared_kv")
    yield tutorial_grad_case("grad_causal", "gradients: lower-triangular mask [1, 1, L, L]",
                             2, 11, 11, 24, 3, "self", mask=keep_tril(11, 11))
    yield tutorial_grad_case("grad_key_padding",
                             "gradients: key padding [N, 1, 1, Lk], lengths 8, 5, 1, 1/sqrt(D)",
                             3, 8, 8, 20, 2, "self", mask=keep_lengths([8, 5, 1], 8),
                             scale="scale_head_dim")
    yield tutorial_grad_case("grad_head_dim_15",
                             "gradients: head_dim 15 (E = 30, H = 2), key padding",
                             2, 9, 9, 30, 2, "self", mask=keep_lengths([9, 4], 9))
    full = (torch.rand(2, 2, 6, 7, generator=torch.Generator().manual_seed(11)) > 0.35).to(torch.uint8)
    full[0, 1, 2, :] = 0
    full[1, :, 0, :] = 0
    yield tutorial_grad_case("grad_fully_masked_rows",
                             "gradients: distinct query, keys, values; random mask with fully "
                             "masked rows (uniform average: values get dO / Lk)",
                             2, 6, 7, 16, 2, "distinct", mask=full)
    yield mha_grad_case("grad_mha", "gradients: nn.MultiheadAttention (Q/K/V biases), "
                        "cross-attention, key padding", 2, 5, 7, 24, 3, "distinct", [7, 3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--only", nargs="+", metavar="CASE",
                        help="write only these cases (file names without .safetensors); the "
                        "manifest keeps the hashes of the files already there")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    manifest = {"generator": "tools/make_golden.py", "cases": []}
    cases = list(all_cases())
    unknown = set(args.only or []) - {name for name, _, _ in cases}
    if unknown:
        parser.error(f"--only: no case named {', '.join(sorted(unknown))}")
    written = 0
    for name, data, info in cases:
        path = os.path.join(args.out, name + ".safetensors")
        if args.only is None or name in args.only:
            with open(path, "wb") as f:
                f.write(data)
            written += 1
        else:
            with open(path, "rb") as f:  # kept: a missing file is an error
                data = f.read()
        info["sha256"] = hashlib.sha256(data).hexdigest()
        manifest["cases"].append(info)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, c["file"])) for c in manifest["cases"])
    print(f"wrote {written} of {len(manifest['cases'])} files ({total} bytes in all) to {args.out}")


if __name__ == "__main__":
    main()
