"""int8 kernel paths: the ONNX int8 arithmetic of every CPU class, checked on this one.

ONNX Runtime's uint8 x int8 kernel adds pairs of products in int16 with saturation on x86 without
VNNI and sums in int32 elsewhere (edge_ser.cpu_features). The emulation rewrites MatMulInteger into
plain int32 ops computing either arithmetic; here it is checked against an independent numpy
reference, against ONNX Runtime's own kernel on this CPU, and the artifact's 7-bit weights are
shown to make both paths agree exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_ser.converters.int8_emulation import emulate_int8_accumulation, int16_pair_headroom
from edge_ser.cpu_features import INT32_EXACT, U8S8_INT16_PAIRS, CpuFeatures, cpu_features

K, N = 64, 24


def _matmul_integer_model(weights: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("MatMulInteger", ["a", "w", "a_zp", "w_zp"], ["y"], name="mm")
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 5, K]),
                       helper.make_tensor_value_info("a_zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 5, N])],
        [numpy_helper.from_array(weights.astype(np.int8), "w"), numpy_helper.from_array(np.zeros(N, np.int8), "w_zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, a: np.ndarray, a_zp: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a, "a_zp": np.array(a_zp, np.uint8)})[0]


def _numpy_reference(a: np.ndarray, w: np.ndarray, a_zp: int, *, saturating: bool) -> np.ndarray:
    a32, w32 = a.astype(np.int64), w.astype(np.int64)
    if not saturating:
        return ((a32 - a_zp) @ w32).astype(np.int32)
    pairs = a32[..., 0::2, None] * w32[0::2] + a32[..., 1::2, None] * w32[1::2]  # (..., K/2, N)
    return (np.clip(pairs, -32768, 32767).sum(axis=-2) - a_zp * w32.sum(axis=0)).astype(np.int32)


@pytest.fixture(scope="module")
def saturating_case():
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (K, N)).astype(np.int8)
    weights[:2] = 127  # one pair of large same-sign weights: saturates with large activations
    a = rng.integers(0, 256, (1, 5, K)).astype(np.uint8)
    a[..., :2] = 255
    return weights, a, 3


@pytest.mark.parametrize("path", [INT32_EXACT, U8S8_INT16_PAIRS])
def test_emulation_matches_an_independent_numpy_reference(saturating_case, path):
    weights, a, a_zp = saturating_case
    emulated = _run(emulate_int8_accumulation(_matmul_integer_model(weights), path), a, a_zp)
    expected = _numpy_reference(a, weights, a_zp, saturating=path == U8S8_INT16_PAIRS)
    np.testing.assert_array_equal(emulated, expected)


def test_the_paths_differ_with_8_bit_weights_and_agree_with_7_bit_weights(saturating_case):
    weights, a, a_zp = saturating_case
    exact = _numpy_reference(a, weights, a_zp, saturating=False)
    assert not np.array_equal(exact, _numpy_reference(a, weights, a_zp, saturating=True))
    assert int16_pair_headroom(_matmul_integer_model(weights))["saturation_possible"]
    seven_bit = np.clip(weights, -64, 64)
    model = _matmul_integer_model(seven_bit)
    headroom = int16_pair_headroom(model)
    assert not headroom["saturation_possible"] and headroom["worst_pair_sum"] == 255 * 128
    np.testing.assert_array_equal(_run(emulate_int8_accumulation(model, U8S8_INT16_PAIRS), a, a_zp),
                                  _run(emulate_int8_accumulation(model, INT32_EXACT), a, a_zp))


def test_onnxruntime_on_this_cpu_computes_the_path_cpu_features_names(saturating_case):
    """Ties the emulation to the real kernel: ONNX Runtime's own MatMulInteger on this CPU equals
    the emulation of the path this CPU's flags select (int16 pairs on AVX2 without VNNI, exact
    int32 with VNNI or on ARM), bit for bit."""
    weights, a, a_zp = saturating_case
    model = _matmul_integer_model(weights)
    path = cpu_features().onnxruntime_u8s8_path
    np.testing.assert_array_equal(_run(model, a, a_zp), _run(emulate_int8_accumulation(model, path), a, a_zp))


def test_cpu_classes():
    avx2 = CpuFeatures(machine="x86_64", model_name="x", flags=("avx2", "fma"))
    vnni = CpuFeatures(machine="x86_64", model_name="x", flags=("avx2", "avx512f", "avx512_vnni"))
    arm = CpuFeatures(machine="aarch64", model_name="x", flags=("asimd", "asimddp"))
    assert (avx2.isa_class, avx2.onnxruntime_u8s8_path) == ("x86-avx2", U8S8_INT16_PAIRS)
    assert (vnni.isa_class, vnni.onnxruntime_u8s8_path) == ("x86-avx512-vnni", INT32_EXACT)
    assert (arm.isa_class, arm.onnxruntime_u8s8_path) == ("arm64-dotprod", INT32_EXACT)
    assert set(avx2.to_dict()) >= {"machine", "isa_class", "flags", "onnxruntime_u8s8_accumulation"}


def test_unknown_path_is_refused(saturating_case):
    with pytest.raises(ValueError, match="expected one of"):
        emulate_int8_accumulation(_matmul_integer_model(saturating_case[0]), "avx9")
