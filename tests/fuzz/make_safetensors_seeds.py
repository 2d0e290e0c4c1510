#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors: small valid safetensors files of each kind the
loader reads (tutorial names, nn.MultiheadAttention names, F32/F16/BF16, metadata, a prefix).
Deterministic; run from anywhere: python3 tests/fuzz/make_safetensors_seeds.py"""
import json
import pathlib
import random
import struct

OUT = pathlib.Path(__file__).resolve().parent / "corpus" / "safetensors"


def encode(values, dtype):
    if dtype == "F32":
        return struct.pack(f"<{len(values)}f", *values)
    if dtype == "F64":
        return struct.pack(f"<{len(values)}d", *values)
    if dtype == "F16":
        return struct.pack(f"<{len(values)}e", *values)
    if dtype == "BF16":  # the high half of the float32 pattern (truncation is fine for seeds)
        return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:]
                        for v in values)
    raise ValueError(dtype)


def write(name, tensors, metadata=None):
    """tensors: {name: (dtype, shape)}, filled with seeded random values."""
    rng = random.Random(name)
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for tensor, (dtype, shape) in tensors.items():
        count = 1
        for s in shape:
            count *= s
        blob = encode([rng.uniform(-0.5, 0.5) for _ in range(count)], dtype)
        header[tensor] = {"dtype": dtype, "shape": shape,
                          "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header, separators=(",", ":")).encode()
    (OUT / name).write_bytes(struct.pack("<Q", len(text)) + text + data)


def tutorial(e, dtype="F32", prefix="", bias=False):
    t = {f"{prefix}{p}.weight": (dtype, [e, e]) for p in ("queries", "keys", "values", "fc_out")}
    t[f"{prefix}fc_out.bias"] = (dtype, [e])
    if bias:
        for p in ("queries", "keys", "values"):
            t[f"{prefix}{p}.bias"] = (dtype, [e])
    return t


def mha(e, dtype="F32", prefix=""):
    return {f"{prefix}in_proj_weight": (dtype, [3 * e, e]), f"{prefix}in_proj_bias": (dtype, [3 * e]),
            f"{prefix}out_proj.weight": (dtype, [e, e]), f"{prefix}out_proj.bias": (dtype, [e])}


OUT.mkdir(parents=True, exist_ok=True)
write("tutorial_e4_f32", tutorial(4))
write("tutorial_e4_f16_bias", tutorial(4, "F16", bias=True))
write("tutorial_e2_bf16_heads", tutorial(2, "BF16"), {"heads": "2"})
write("mha_e4_f32", mha(4))
write("mha_e2_prefix", mha(2, prefix="encoder.layers.0.self_attn."), {"format": "pt"})
write("mixed_dtypes", {"a": ("F64", [2, 3]), "b": ("F16", [5]), "c": ("F32", [])})
