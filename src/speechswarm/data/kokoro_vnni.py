"""Kokoro's int8 convolutions on onnxruntime's VNNI integer GEMM: the same integers, ~1.4x faster.

    path = kokoro_vnni.fast_model(core.model_path())   # built once (~1 s), then cached

Kokoro-82M's int8 ONNX model spends ~70 % of its time in `ConvInteger` (87 one-dimensional
convolutions, most in the vocoder's residual blocks). onnxruntime runs ConvInteger with uint8
weights on a u8 x u8 GEMM; MatMulInteger with *int8* weights runs on its u8 x s8 GEMM, which
uses the CPU's VNNI dot products and is ~2.3x faster per operation (bench/RESULTS.md, "Corpus
synthesis"). So each ConvInteger (group 1, scalar weight zero point) becomes

    x_q (1, C, T) u8 -> Transpose (1, T, C) -> Pad with x's zero point -> one Slice per tap
    -> Concat (1, T', K*C) -> MatMulInteger(., W, x_zp, w_zp - 128) (1, T', O) int32
    -> Transpose (1, O, T'), under the ConvInteger's output name

with W = (w - 128) as int8, laid out (K*C, O) tap-major. Every product and every int32 sum is
the one the ConvInteger made, so the audio is bit-identical. Where a CPU lacks VNNI the
u8 x s8 GEMM may saturate 16-bit partial sums (onnxruntime's VPMADDUBSW caveat): `usable()`
says no there, and `speechswarm.data.kokoro` also checks the rewrite against the original on
a probe utterance before it uses it. Needs the `onnx` package (the `onnx` and `dev` extras).
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np

from speechswarm import host
from speechswarm.atomic import atomic_open

VERSION = 1  # of the rewrite: part of the cached file's name
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT64_MAX = np.iinfo(np.int64).max


def usable() -> bool:
    """Whether this CPU's u8 x s8 GEMM is exact: an x86 CPU with VNNI (or AMX)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = host.cpu_flags().split()
    return any(f in flags for f in VNNI_FLAGS)


def fast_model(source: Path, cache: Path | None = None) -> Path:
    """The rewritten model of `source`, built on first use into `cache` (default:
    <cache_root>/kokoro) under a name keyed by the source's size and first and last MiB;
    raises whatever onnx raises, or ValueError for a graph it does not know."""
    cache = cache or host.cache_root() / "kokoro"
    out = cache / f"{source.stem}.vnni{VERSION}-{_fingerprint(source)}.onnx"
    if not out.exists():
        import onnx

        model = onnx.load(str(source))
        rewrite(model)
        with atomic_open(out, "wb") as f:
            f.write(model.SerializeToString())
    return out


def rewrite(model) -> int:
    """Replace every ConvInteger of `model` (an onnx.ModelProto) in place; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consts: dict[str, np.ndarray] = {}

    def const(name: str, value) -> str:
        consts.setdefault(name, np.asarray(value))
        return name

    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "ConvInteger":
            nodes.append(node)
            continue
        x_q, w_name, x_zp, w_zp_name = node.input
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(weights[w_name])  # (O, C, K) uint8
        w_zp = numpy_helper.to_array(weights[w_zp_name])
        if w.dtype != np.uint8 or w.ndim != 3 or w_zp.ndim != 0 or attrs.get("group", 1) != 1:
            raise ValueError(f"{node.name}: not a 1-D, group-1, per-tensor uint8 ConvInteger")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{node.name}: auto_pad is not supported")
        out_ch, in_ch, k = w.shape
        (dilation,) = attrs.get("dilations", [1])
        (stride,) = attrs.get("strides", [1])
        pad_left, pad_right = attrs.get("pads", [0, 0])
        w_s8 = (w.astype(np.int16) - 128).astype(np.int8).transpose(2, 1, 0).reshape(-1, out_ch)
        w_s8_name = const(f"{w_name}_s8_taps", np.ascontiguousarray(w_s8))
        zp_s8_name = const(f"{w_zp_name}_s8", np.array(int(w_zp) - 128, dtype=np.int8))
        pre = f"{node.name}_vnni"
        nodes.append(helper.make_node("Transpose", [x_q], [f"{pre}_t"], perm=[0, 2, 1]))
        x = f"{pre}_t"  # (1, T, C)
        if pad_left or pad_right:
            pads = const(f"vnni_pads_{pad_left}_{pad_right}", _i64(0, pad_left, 0, 0, pad_right, 0))
            nodes.append(helper.make_node("Pad", [x, pads, x_zp], [f"{pre}_pad"], mode="constant"))
            x = f"{pre}_pad"
        if k > 1 or stride > 1:
            taps = []
            for tap in range(k):
                tail = dilation * (k - 1 - tap)  # frames this tap leaves at the end
                start = const(f"vnni_i64_{tap * dilation}", _i64(tap * dilation))
                end = const(
                    f"vnni_i64_{-tail}" if tail else "vnni_i64_max", _i64(-tail or INT64_MAX)
                )
                axis = const("vnni_i64_1", _i64(1))
                step = const(f"vnni_step_{stride}", _i64(stride))
                taps.append(f"{pre}_tap{tap}")
                nodes.append(helper.make_node("Slice", [x, start, end, axis, step], [taps[-1]]))
            nodes.append(helper.make_node("Concat", taps, [f"{pre}_cols"], axis=2))
            x = f"{pre}_cols"  # (1, T', K*C), column tap * C + c
        nodes.append(
            helper.make_node("MatMulInteger", [x, w_s8_name, x_zp, zp_s8_name], [f"{pre}_y"])
        )
        nodes.append(helper.make_node("Transpose", [f"{pre}_y"], [node.output[0]], perm=[0, 2, 1]))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items())
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return count


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _fingerprint(path: Path) -> str:
    """16 hex digits of the size and the first and last MiB: cheap, and a different model
    file (another package version) gets another name."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
    return digest.hexdigest()[:16]
