"""Core ML target, converter side: ``ExportedProgram.run_decompositions({})`` -> ML Program
``.mlpackage``, weights compressed by :func:`compress_coreml_weights` (below). The file name,
precisions, tolerances and runner are declared in :mod:`edge_ser.runtime.target_coreml`.

Prediction needs macOS. On other platforms the artifact is verified structurally by
:func:`verify_mlpackage`: input/output names and shapes from the saved spec, and every
stored weight tensor read back from the saved program, dequantized, and compared with the
float32 weight it came from (max/mean abs error, relative error, and a per-scheme bound).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_ser.converters.backend_base import DEFAULT_IO_NAMES, Backend, IONames, Lowered, PrecisionSpec
from edge_ser.runtime import target_coreml
from edge_ser.converters.fused import INPUT_NAME, OUTPUT_NAMES

DEPLOYMENT_TARGET = "iOS17"
"""Set explicitly: ML Program + per-channel int8 and 4-bit LUT constexprs need iOS 16+; iOS 17
keeps the iOS16/17 constexpr ops. The Conv-DFT front end needs no iOS 18 STFT op."""

_SUFFIXES = ("_quantized", "_palettized", "_to_fp16")


class CoreMLBackend(Backend):
    target = target_coreml.TARGET

    def versions(self) -> dict[str, str]:
        import coremltools
        import torch

        return {"name": self.name, "version": coremltools.__version__, "torch": torch.__version__,
                "minimum_deployment_target": DEPLOYMENT_TARGET, "model_type": "mlprogram"}

    def lower(self, exported: Any, *, precision: PrecisionSpec, out_dir: Path,
              io_names: IONames = DEFAULT_IO_NAMES) -> Lowered:
        import coremltools as ct

        start = time.perf_counter()
        reference_weights = exported_weights(exported)
        expected_io = _exported_io(exported, io_names)
        # The empty table keeps ops whole; the default table unrolls and copies weights per step.
        program = exported.run_decompositions({})
        compute = ct.precision.FLOAT32 if precision.name == "fp32" else ct.precision.FLOAT16
        mlmodel = ct.convert(
            program,
            inputs=[ct.TensorType(name=spec["name"], shape=tuple(spec["shape"]), dtype=np.float32)
                    for spec in expected_io["inputs"]],
            outputs=[ct.TensorType(name=name) for name in io_names[1]],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=compute,
        )
        if precision.name in ("int8", "palette4"):
            mlmodel = compress_coreml_weights(mlmodel, scheme=precision.name)
        mlmodel.save(str(Path(out_dir) / self.artifact_file))
        return Lowered(
            files=(self.artifact_file,),
            info={"lowering_s": round(time.perf_counter() - start, 3), "compute_precision": compute.value},
            reference={"weights": reference_weights, "io": expected_io},
        )

    def verify(self, artifact_dir: Path, *, lowered: Lowered, precision: PrecisionSpec) -> dict[str, Any]:
        ref = lowered.reference or {}
        return verify_mlpackage(
            Path(artifact_dir) / self.artifact_file, reference_weights=ref.get("weights", {}),
            expected_io=ref.get("io"), precision=precision.name,
        )


def exported_weights(exported: Any) -> dict[str, np.ndarray]:
    """Parameters/buffers/constants of an ExportedProgram keyed by graph placeholder name
    (``p_head_fc_weight``); Core ML names its constants after these placeholders."""
    from torch.export.graph_signature import InputKind

    state = dict(exported.state_dict)
    state.update(getattr(exported, "constants", {}) or {})
    weights = {}
    for spec in exported.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and spec.target in state:
            value = state[spec.target]
            if hasattr(value, "is_floating_point") and value.is_floating_point():
                weights[spec.arg.name] = value.detach().float().cpu().numpy()
    return weights


def _exported_io(exported: Any, io_names: IONames = DEFAULT_IO_NAMES) -> dict[str, Any]:
    placeholders = [n for n in exported.graph.nodes if n.op == "placeholder"]
    user_inputs = exported.graph_signature.user_inputs
    inputs = [n for n in placeholders if n.name in user_inputs]
    output_node = next(n for n in exported.graph.nodes if n.op == "output")
    outputs = [a.meta["val"] for a in output_node.args[0]]
    return {
        "inputs": [{"name": name, "shape": list(n.meta["val"].shape)} for name, n in zip(io_names[0], inputs)],
        "outputs": [{"name": name, "shape": list(v.shape)} for name, v in zip(io_names[1], outputs)],
    }


def _load_mil_program(path: Path) -> tuple[Any, Any]:
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    weights_dir = os.path.join(str(path), "Data", "com.apple.CoreML", "weights")
    program = load_milproto(model_spec=spec, specification_version=spec.specificationVersion,
                            file_weights_dir=weights_dir)
    return spec, program


def _base_name(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name


def verify_mlpackage(
    path: Path, *, reference_weights: Mapping[str, np.ndarray], expected_io: Mapping[str, Any] | None, precision: str,
) -> dict[str, Any]:
    """Check a saved ``.mlpackage`` without running it.

    - ``io``: input/output names and shapes from the saved spec equal ``expected_io``.
    - ``weights``: each float weight tensor stored in the program (plain, fp16, int8
      ``constexpr_affine_dequantize`` or palettized ``constexpr_lut_to_dense``) is
      materialised to dense values and compared with the float32 source weight of the same
      name. Per tensor: ``max_abs_err``, ``mean_abs_err``, ``rel_err`` = ||w_q - w|| / ||w||,
      ``levels`` (distinct values; per output channel for int8) and ``within_bound``:

      * fp32: exact; fp16: |e| <= 2^-11 |w| + 6e-8 (round to nearest half precision);
      * int8: |e| <= 0.6 s_c + 2^-10 |w| + 1e-7 with s_c = max|w_c| / 127 (half a step, plus the
        fp16 rounding of the stored scale and weights), and at most 255 levels per channel;
      * palette4: at most 16 distinct values per tensor and rel_err <= 1.1 x the error of an
        independent 16-level 1-D k-means of the same source tensor (:func:`kmeans_1d_rel_err`)
        + 0.005. A fixed bound does not fit every tensor: 16 levels give about 0.06 on uniform,
        0.10 on Gaussian and up to ~0.18 on heavy-tailed real weights (Whisper-base measured).

    Returns ``{"passed", "io", "weights": [...], "summary", "unmatched"}``.
    """
    spec, program = _load_mil_program(Path(path))
    io_report = _check_io(spec, expected_io)
    tensors = []
    unmatched = []
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                continue
            consumers = [c.op_type for c in op.outputs[0].child_ops]
            if consumers and all(c.startswith("constexpr_") for c in consumers):
                continue  # a compression operand (scale, LUT), checked through its constexpr op
            stored_as = "fp16" if value.dtype == np.float16 else "fp32"
        elif op.op_type.startswith("constexpr_"):
            value = op.materialized_val_inference()
            stored_as = {"constexpr_affine_dequantize": "int8", "constexpr_lut_to_dense": "palette4"}.get(
                op.op_type, op.op_type)
        else:
            continue
        name = _base_name(op.name)
        source = reference_weights.get(name)
        if source is None or source.shape != value.shape:
            if value.size >= 16:
                unmatched.append({"name": op.name, "shape": list(value.shape), "stored_as": stored_as})
            continue
        tensors.append(_compare_weight(name, np.asarray(value, dtype=np.float64), source.astype(np.float64),
                                       stored_as=stored_as))
    compressed = [t for t in tensors if t["stored_as"] in ("int8", "palette4")]
    expected_kind = {"int8": "int8", "palette4": "palette4"}.get(precision)
    summary = {
        "tensors_checked": len(tensors),
        "tensors_compressed": len(compressed),
        "max_abs_err": max((t["max_abs_err"] for t in tensors), default=0.0),
        "max_rel_err": max((t["rel_err"] for t in tensors), default=0.0),
        "mean_rel_err_compressed": float(np.mean([t["rel_err"] for t in compressed])) if compressed else 0.0,
        "compressed_elements_share": (sum(t["numel"] for t in compressed) / max(1, sum(t["numel"] for t in tensors))),
    }
    passed = bool(io_report["passed"] and tensors and all(t["within_bound"] for t in tensors)
                  and (expected_kind is None or compressed))
    return {"passed": passed, "io": io_report, "summary": summary, "weights": tensors, "unmatched": unmatched}


def _compare_weight(name: str, stored: np.ndarray, source: np.ndarray, *, stored_as: str) -> dict[str, Any]:
    err = np.abs(stored - source)
    norm = float(np.linalg.norm(source))
    rel = float(np.linalg.norm(stored - source) / norm) if norm > 0 else float(np.linalg.norm(stored - source))
    if stored_as == "fp32":
        ok = bool(np.all(err == 0))
        levels = None
    elif stored_as == "fp16":
        ok = bool(np.all(err <= 2.0**-11 * np.abs(source) + 6e-8))
        levels = None
    elif stored_as == "int8":
        flat_src = source.reshape(source.shape[0], -1)
        step = np.abs(flat_src).max(axis=1, keepdims=True) / 127.0
        bound = 0.6 * step + 2.0**-10 * np.abs(flat_src) + 1e-7
        levels = int(max(len(np.unique(row)) for row in stored.reshape(stored.shape[0], -1)))
        ok = bool(np.all(err.reshape(flat_src.shape) <= bound)) and levels <= 255
    elif stored_as == "palette4":
        levels = int(len(np.unique(stored)))
        reference = kmeans_1d_rel_err(source, levels=16)
        ok = levels <= 16 and rel <= 1.1 * reference + 0.005
    else:
        levels = None
        ok = False
    return {"name": name, "stored_as": stored_as, "shape": list(source.shape), "numel": int(source.size),
            "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()), "rel_err": rel,
            "levels": levels, "within_bound": ok}


def kmeans_1d_rel_err(weights: np.ndarray, *, levels: int = 16, iterations: int = 25) -> float:
    """||w_q - w|| / ||w|| of a 1-D k-means (Lloyd, quantile start) of all values of `weights`
    with `levels` centroids: the error a correct palettization should roughly reach."""
    values = np.sort(np.asarray(weights, dtype=np.float64).ravel())
    norm = float(np.linalg.norm(values))
    if values.size == 0 or norm == 0.0:
        return 0.0
    centroids = np.unique(np.quantile(values, (np.arange(levels) + 0.5) / levels))
    for _ in range(iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2.0
        bins = np.searchsorted(edges, values)
        sums = np.bincount(bins, weights=values, minlength=len(centroids))
        counts = np.bincount(bins, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    edges = (centroids[1:] + centroids[:-1]) / 2.0
    return float(np.linalg.norm(values - centroids[np.searchsorted(edges, values)]) / norm)


def _check_io(spec: Any, expected: Mapping[str, Any] | None) -> dict[str, Any]:
    found_in = [{"name": i.name, "shape": list(i.type.multiArrayType.shape)} for i in spec.description.input]
    found_out = [{"name": o.name, "shape": list(o.type.multiArrayType.shape)} for o in spec.description.output]
    report: dict[str, Any] = {"inputs": found_in, "outputs": found_out}
    problems = []
    want_in = [e["name"] for e in expected["inputs"]] if expected is not None else [INPUT_NAME]
    want_out = [e["name"] for e in expected["outputs"]] if expected is not None else list(OUTPUT_NAMES)
    if [i["name"] for i in found_in] != want_in:
        problems.append(f"inputs {[i['name'] for i in found_in]}, expected {want_in}")
    if [o["name"] for o in found_out] != want_out:
        problems.append(f"outputs {[o['name'] for o in found_out]}, expected {want_out}")
    if expected is not None:
        for kind, found in (("inputs", found_in), ("outputs", found_out)):
            exp_shapes = [list(e["shape"]) for e in expected[kind]]
            got_shapes = [f["shape"] for f in found]
            # Core ML may leave a shape unset (empty) for outputs it infers at load time.
            if any(g and g != e for g, e in zip(got_shapes, exp_shapes)) or len(got_shapes) != len(exp_shapes):
                problems.append(f"{kind} shapes {got_shapes}, expected {exp_shapes}")
    report["problems"] = problems
    report["passed"] = not problems
    return report


COREML_WEIGHT_THRESHOLD = 2048
"""Core ML compresses weight tensors with at least this many elements; biases and other
small tensors stay fp32 (they are a negligible share of the size and sensitive to error)."""


def compress_coreml_weights(mlmodel: Any, *, scheme: str) -> Any:
    """Weight compression of a Core ML ML Program: ``"int8"`` (linear symmetric, per output
    channel) or ``"palette4"`` (4-bit k-means palettization, one 16-entry table per tensor)."""
    import coremltools.optimize.coreml as cto

    if scheme == "int8":
        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=COREML_WEIGHT_THRESHOLD,
        )
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    if scheme == "palette4":
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=COREML_WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    raise ValueError(f"unknown Core ML weight compression {scheme!r}; expected 'int8' or 'palette4'.")
