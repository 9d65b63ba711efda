#!/usr/bin/env python3
"""Writes the small seed inputs of the fuzz targets into fuzz/seeds/<target>/.

    python3 fuzz/seeds/gen_seeds.py

Needs torch, numpy and Pillow. The seeds are tiny well-formed files of every kind the readers
accept (so the fuzzer starts from valid structure and mutates it); the committed hostile files
(crates/resnet/tests/fixtures/hostile) and the test fixtures are passed as extra seed folders
by the commands in the book's "Reliability" chapter.
"""
import io
import json
import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def saved(obj, zip_format=True):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def pth_seeds():
    torch.manual_seed(0)
    sd = OrderedDict([
        ("conv.weight", torch.randn(2, 1, 2, 2)),
        ("bn.num_batches_tracked", torch.tensor(3)),
        ("fc.bias", torch.randn(3).half()),
    ])
    out("pth", "zip.pth", saved(sd))
    out("pth", "legacy.pth", saved(sd, zip_format=False))
    t = torch.arange(6.0).reshape(2, 3)
    out("pth", "views.pth", saved(OrderedDict([("t", t.t()), ("row", t[1]), ("b", t.bfloat16()),
                                               ("d", t.double()), ("i", t.int())])))
    out("pth", "checkpoint_legacy.pth",
        saved({"state_dict": OrderedDict([("w", torch.nn.Parameter(torch.ones(2)))]), "epoch": 1},
              zip_format=False))
    out("pth", "parameter.pth", saved({"model": OrderedDict([("w", torch.nn.Parameter(torch.ones(2, 2)))])}))
    # The pickle target takes data.pkl alone; its storages are data/0 .. data/3, 64 floats each.
    p = io.BytesIO()
    sd = OrderedDict([("a", torch.zeros(4, 4)), ("b", torch.zeros(8).long())])
    pickle.dump(sd, p, protocol=2)  # a plain pickle of tensors: refused, but a useful shape
    out("pickle", "plain.pkl", p.getvalue())
    import zipfile
    for name in ("zip.pth", "views.pth", "parameter.pth"):
        with zipfile.ZipFile(os.path.join(HERE, "pth", name)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            out("pickle", name.replace(".pth", ".pkl"), z.read(pkl))


def safetensors_bytes(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    f = np.arange(6, dtype="<f4")
    out("safetensors", "f32.safetensors", safetensors_bytes(
        {"w": ("F32", [2, 3], f.tobytes()), "n": ("I64", [], np.int64(3).tobytes())}, {"arch": "resnet18"}))
    out("safetensors", "dtypes.safetensors", safetensors_bytes({
        "h": ("F16", [2], np.array([1, 2], "<f2").tobytes()),
        "b": ("BF16", [2], b"\x80\x3f\x00\x40"),
        "d": ("F64", [1], np.array([1], "<f8").tobytes()),
        "i": ("I32", [2], np.array([1, -2], "<i4").tobytes()),
        "s": ("I16", [1], b"\x01\x00"),
        "c": ("I8", [1], b"\xff"),
        "u": ("U8", [1], b"\x07"),
        "z": ("BOOL", [1], b"\x01"),
        "e": ("F32", [0, 3], b""),
    }))


def npy_seeds():
    for name, arr in {
        "f4.npy": np.arange(6, dtype="<f4").reshape(2, 3),
        "f8_fortran.npy": np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3)),
        "i8.npy": np.array([1, -2, 3], dtype="<i8"),
        "i4_scalar.npy": np.array(5, dtype="<i4"),
        "empty.npy": np.zeros((0, 4), dtype="<f4"),
    }.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        out("npy", name, buf.getvalue())


def image_seeds():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (8, 6, 3), dtype=np.uint8))
    for name, img, fmt, kw in [
        ("rgb.png", rgb, "PNG", {}),
        ("gray.png", rgb.convert("L"), "PNG", {}),
        ("rgba.png", rgb.convert("RGBA"), "PNG", {}),
        ("palette.png", rgb.convert("P"), "PNG", {}),
        ("gray16.png", Image.fromarray((np.arange(48, dtype=np.uint16).reshape(8, 6) * 1000)), "PNG", {}),
        ("rgb.jpg", rgb, "JPEG", {"quality": 80}),
        ("progressive.jpg", rgb, "JPEG", {"progressive": True}),
        ("gray.jpg", rgb.convert("L"), "JPEG", {}),
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG", {}),
        ("rgb.bmp", rgb, "BMP", {}),
        ("rgb.ppm", rgb, "PPM", {}),
        ("rgb.tiff", rgb, "TIFF", {}),
        ("rgb.webp", rgb, "WEBP", {"lossless": True}),
        ("lossy.webp", rgb, "WEBP", {"quality": 50}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out("image", name, buf.getvalue())


REPL = {
    "tensors.txt": "x = randn(2, 3)\ny = x @ x.t()\nprint(y.shape, y.sum(), softmax(y, dim=1))\nz = cat([x, x], dim=0)[1:3]\n",
    "models.txt": "net = resnet18(num_classes=3, base_planes=2)\neval(net)\nsummary(net, input_size=(1, 3, 32, 32))\n"
                  "y = net(rand(1, 3, 16, 16))\npredict(net, rand(1, 3, 16, 16), k=2)\nstate_dict(net.layer1[0])\n",
    "layers.txt": "m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
                  "nn.Flatten(), nn.Linear(4, 2))\nm(randn(2, 3, 8, 8)).argmax(dim=1)\nfreeze(m[0])\nparams(m)\n",
    "values.txt": "a, b = (1, 2.5)\nc = [a, b, 'x'] + [None, True]\nlen(c); type(c); dir(a)\n"
                  "t = tensor([[1, 2], [3, 4]], dtype=torch.float32)\nt.mean(dim=0, keepdim=True)\ntopk(t.flatten(), 2)\n",
    "meta.txt": ":help\n:vars\nx = arange(0, 10, 2)\n:vars\n:reset\nhelp(randn)\nmanual_seed(3)\n",
    "continued.txt": "x = [1,\n2,\n3]\ny = (x \\\n)\nprint(x, y)\n",
    "files.txt": "net = resnet18(weights='w.pth')\nload(net, 'w.pth')\nsave(net, 'out.safetensors')\nimage('a.jpg')\n",
}


def repl_seeds():
    for name, text in REPL.items():
        out("repl", name, text.encode())


if __name__ == "__main__":
    pth_seeds()
    safetensors_seeds()
    npy_seeds()
    image_seeds()
    repl_seeds()
    for t in sorted(os.listdir(HERE)):
        d = os.path.join(HERE, t)
        if os.path.isdir(d):
            files = os.listdir(d)
            print(f"{t}: {len(files)} seeds, {sum(os.path.getsize(os.path.join(d, f)) for f in files)} bytes")
