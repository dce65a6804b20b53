"""Run an int8 ONNX model as another CPU's kernels would: parity on every kernel path, here.

ONNX Runtime computes ``MatMulInteger`` (uint8 activations x int8 weights, from dynamic
quantization) with whatever kernel the CPU dispatches to, and the kernels differ in
arithmetic, not just speed (:mod:`edge_ser.cpu_features`):

- ``int32-exact`` (VNNI, AMX, ARM64): every product summed in int32, the ONNX definition.
- ``u8s8-int16-pairs`` (x86 AVX2 / AVX-512 without VNNI): ``vpmaddubsw`` multiplies uint8 by
  int8 and adds *adjacent pairs* of products into int16 with saturation, then the pairs are
  summed in int32 (``vpmaddwd`` by ones); zero points are corrected afterwards from row and
  column sums. A pair saturates when ``a_2j*w_2j + a_2j+1*w_2j+1`` leaves [-32768, 32767],
  possible with 8-bit weights (255 * 127 * 2 = 64770) and impossible with 7-bit weights
  (|w| <= 64: 255 * 64 * 2 = 32640).

There is no switch to make ONNX Runtime pick a kernel, so :func:`emulate_int8_accumulation`
rewrites each ``MatMulInteger`` of a model into plain int32 ONNX ops (Cast, MatMul, Clip,
ReduceSum) that compute the chosen path's arithmetic exactly; the rest of the graph is
untouched. The result runs on any CPU. On an AVX2 CPU without VNNI the ``u8s8-int16-pairs``
emulation reproduces ONNX Runtime's own output (a fast-tier test checks that where the CPU is
such a one), which is the evidence that the emulation is the kernel's arithmetic.

:func:`int16_pair_headroom` is the static side of the same fact: the largest pair sum any
uint8 input can produce with a model's weights. At or below 32767 no kernel can saturate, on
any CPU, for any input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_ser.cpu_features import INT8_ACCUMULATION_PATHS, INT32_EXACT, U8S8_INT16_PAIRS

INT16_MAX = 32767
UINT8_MAX = 255


def _initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def _weight(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    init = _initializers(model).get(name)
    return None if init is None else numpy_helper.to_array(init)


def int16_pair_headroom(model: Any) -> dict[str, Any]:
    """Worst-case pair sum of every uint8 x int8 ``MatMulInteger`` in ``model``.

    For weights ``w`` (K, N), the largest |a_2j w_2j + a_2j+1 w_2j+1| over uint8 inputs is
    ``255 * max(|w_2j| + |w_2j+1|)`` when the two weights share a sign, ``255 * max(|w|)``
    otherwise. Returns ``{"worst_pair_sum": int, "int16_max": 32767, "saturation_possible":
    bool, "matmuls": n, "worst_node": name}`` (``worst_pair_sum`` 0 when there is no such node).
    """
    worst, worst_node, count = 0, None, 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        weights = _weight(model, node.input[1])
        if weights is None or weights.dtype != np.int8:
            continue  # uint8 weights (U8U8) use a widening kernel everywhere: no int16 pairs
        count += 1
        w = weights.astype(np.int64).reshape(weights.shape[0], -1)
        if w.shape[0] % 2:
            w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)])
        first, second = w[0::2], w[1::2]
        same_sign = np.sign(first) * np.sign(second) >= 0
        pair = np.where(same_sign, np.abs(first) + np.abs(second), np.maximum(np.abs(first), np.abs(second)))
        value = int(UINT8_MAX * pair.max()) if pair.size else 0
        if value > worst:
            worst, worst_node = value, node.name
    return {"worst_pair_sum": worst, "int16_max": INT16_MAX, "saturation_possible": worst > INT16_MAX,
            "matmuls": count, "worst_node": worst_node}


def emulate_int8_accumulation(model: Any, path: str) -> Any:
    """A copy of ``model`` whose ``MatMulInteger`` nodes compute ``path``'s arithmetic with
    int32 ops that every CPU evaluates identically (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    if path not in INT8_ACCUMULATION_PATHS:
        raise ValueError(f"unknown int8 accumulation path {path!r}; expected one of {list(INT8_ACCUMULATION_PATHS)}.")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    new_nodes, extra_inits = [], []
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMulInteger":
            new_nodes.append(node)
            continue
        weights = _weight(out, node.input[1])
        if weights is None or weights.ndim != 2:
            raise ValueError(
                f"MatMulInteger {node.name!r} has no constant 2-D weight; expected dynamic quantization's "
                "(activations x int8 weight initializer) form.")
        a_zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        w_zp = _weight(out, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        prefix = f"emu{index}_"
        w = weights.astype(np.int32)
        if w_zp is not None:
            w = w - np.asarray(w_zp, dtype=np.int32).reshape(1, -1) * np.ones_like(w)
        saturating = path == U8S8_INT16_PAIRS and weights.dtype == np.int8
        if saturating and w_zp is not None and np.any(np.asarray(w_zp) != 0):
            raise ValueError(f"MatMulInteger {node.name!r}: int8 weights with a non-zero zero point; the int16-pair "
                             "emulation covers symmetric int8 weights (quantize_dynamic's QInt8) only.")
        if saturating and weights.shape[0] % 2:
            raise ValueError(f"MatMulInteger {node.name!r}: odd inner dimension {weights.shape[0]}; the int16-pair "
                             "emulation pairs rows (2j, 2j+1) and covers even K only.")
        nodes, inits = _matmul_integer_subgraph(
            prefix=prefix, a=node.input[0], a_zero_point=a_zp, weights=w, raw_weights=weights.astype(np.int32),
            saturating=saturating, output=node.output[0])
        new_nodes.extend(nodes)
        extra_inits.extend(numpy_helper.from_array(v, name=k) for k, v in inits.items())
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(extra_inits)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Int32 MatMul/Clip/ReduceSum need opset >= 13 (ReduceSum's axes input); keep the model's if newer.
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 13:
            opset.version = 13
    return out


def _matmul_integer_subgraph(*, prefix: str, a: str, a_zero_point: str | None, weights: np.ndarray,
                             raw_weights: np.ndarray, saturating: bool, output: str) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Nodes computing ``(A - a_zp) @ W`` as int32 (A uint8 ``(..., K)``, W ``(K, N)`` with its
    zero point already removed). ``saturating``: the uint8 x int8 int16-pair kernel: raw
    products ``A @ W_raw`` in clipped pairs, then ``- a_zp * colsum(W_raw)``."""
    from onnx import helper

    k, n = weights.shape
    names = lambda s: prefix + s  # noqa: E731
    inits: dict[str, np.ndarray] = {}
    nodes = [
        helper.make_node("Cast", [a], [names("a32")], to=6),  # INT32
        helper.make_node("Shape", [a], [names("shape")]),
        helper.make_node("Slice", [names("shape"), names("zero1"), names("minus1")], [names("lead")]),
        helper.make_node("Concat", [names("lead"), names("n")], [names("out_shape")], axis=0),
    ]
    inits.update({names("zero1"): np.array([0], np.int64), names("minus1"): np.array([-1], np.int64),
                  names("n"): np.array([n], np.int64)})
    if not saturating:
        centred = names("a32")
        if a_zero_point is not None:
            nodes.append(helper.make_node("Cast", [a_zero_point], [names("azp32")], to=6))
            nodes.append(helper.make_node("Sub", [names("a32"), names("azp32")], [names("a_centred")]))
            centred = names("a_centred")
        inits[names("w")] = weights.astype(np.int32)
        nodes.append(helper.make_node("MatMul", [centred, names("w")], [output]))
        return nodes, inits
    inits[names("w_pairs")] = raw_weights.reshape(k // 2, 2, n)
    inits[names("pair_shape")] = np.array([-1, k // 2, 2], np.int64)
    inits[names("lo")] = np.array(-INT16_MAX - 1, np.int32)
    inits[names("hi")] = np.array(INT16_MAX, np.int32)
    inits[names("axis0")] = np.array([0], np.int64)
    source = names("a32")
    nodes += [
        helper.make_node("Reshape", [source, names("pair_shape")], [names("rows")]),             # (R, K/2, 2)
        helper.make_node("Transpose", [names("rows")], [names("pairs")], perm=[1, 0, 2]),       # (K/2, R, 2)
        helper.make_node("MatMul", [names("pairs"), names("w_pairs")], [names("pair_sums")]),   # (K/2, R, N)
        helper.make_node("Clip", [names("pair_sums"), names("lo"), names("hi")], [names("clipped")]),
        helper.make_node("ReduceSum", [names("clipped"), names("axis0")], [names("raw")], keepdims=0),  # (R, N)
    ]
    result = names("raw")
    if a_zero_point is not None:
        inits[names("colsum")] = raw_weights.sum(axis=0, dtype=np.int64).astype(np.int32).reshape(1, n)
        nodes += [
            helper.make_node("Cast", [a_zero_point], [names("azp32")], to=6),
            helper.make_node("Mul", [names("azp32"), names("colsum")], [names("correction")]),
            helper.make_node("Sub", [names("raw"), names("correction")], [names("corrected")]),
        ]
        result = names("corrected")
    nodes.append(helper.make_node("Reshape", [result, names("out_shape")], [output]))
    return nodes, inits
