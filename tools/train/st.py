"""Minimal safetensors reader and writer on torch alone (no numpy, no extra packages).

The format: an 8-byte little-endian header length, a JSON header naming every tensor's
dtype, shape and byte range, then the raw little-endian data.
"""
import ctypes
import json
import struct

import torch

_DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
       "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def load(path):
    """Returns {name: tensor}; floating tensors come back as float32."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = _DT[info["dtype"]]
        if b > a:
            t = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=dt)
        else:
            t = torch.zeros(0, dtype=dt)
        t = t.reshape(info["shape"])
        out[name] = t.float() if t.is_floating_point() else t
    return out


def _raw(t):
    t = t.detach().cpu().contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def save(path, tensors, metadata=None, bf16=()):
    """Writes tensors in name order: floating ones as F32, or BF16 for names in bf16."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.is_floating_point():
            t = t.to(torch.bfloat16 if name in bf16 else torch.float32)
        dt = {v: k for k, v in _DT.items()}[t.dtype]
        raw = _raw(t)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
