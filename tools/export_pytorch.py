#!/usr/bin/python3
# The README's "From PyTorch to simdattn", step 1: a PyTorch module's weights, an input and
# PyTorch's output, written as safetensors with Debian's python3-torch alone (no `safetensors`
# package). Writes attn.safetensors and io.safetensors into the current directory, for
# tools/from_pytorch.cpp. The README shows the code below verbatim (CI checks it).
import json, struct, torch

def save_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {"__metadata__": metadata or {}}, [], 0
    for name, t in tensors.items():
        data = t.detach().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

torch.manual_seed(0)
attn = torch.nn.MultiheadAttention(256, 8, batch_first=True).eval()  # or your trained module
x = torch.randn(1, 2, 256)
with torch.no_grad():
    out, _ = attn(x, x, x, need_weights=False)
save_safetensors("attn.safetensors", attn.state_dict(), {"heads": "8"})
save_safetensors("io.safetensors", {"x": x, "out": out})  # to compare in C++
