"""Streaming artifacts: the head carries its state across hops, and streamed == offline.

"Offline" is the same computation over the same samples without streaming: the foundation model
on the same windows, their newest frames joined in time, and the training TC-GRU over all frames
so far (:func:`edge_ser.converters.streaming.offline_stream_reference`). Fast tier: a tiny random
Whisper (3 blocks, width 64) cut at block 2, a 2-layer TC-GRU, 0.5 s windows, 0.2 s hops.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_ser.audio import write_audio
from edge_ser.converters.export_forms import TCGRUStreamingHead
from edge_ser.converters.fused import build_fused_model
from edge_ser.converters.streaming import build_streaming_model, offline_stream_reference, stream_outputs
from edge_ser.errors import AudioError
from edge_ser.labels import SAMPLE_RATE
from edge_ser.runtime.artifact import (
    OUTPUT_NAMES,
    stream_io_names,
    stream_states,
)
from edge_ser.runtime.parity import compare
from edge_ser.train.model import TCGRU

WINDOW_S = 0.5
HOP_S = 0.2
HOP = int(HOP_S * SAMPLE_RATE)


def voiced(seconds: float, *, seed: int) -> np.ndarray:
    """Speech-like audio: a vibrato harmonic tone with a syllable envelope plus noise, (samples,) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * rng.uniform(90, 260) * (t + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)))
    return (rng.uniform(0.1, 0.5) * tone * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def fused():
    from edge_ser.fm import load_foundation_model

    fm = load_foundation_model("tiny-whisper", random_init=True, seed=0)
    torch.manual_seed(0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=2, embed_dim=256)
    with torch.no_grad():
        head.class_head.weight.mul_(20.0)  # random heads are near-uniform; sharpen so top-1 means something
        head.set_feature_stats(np.zeros(fm.spec.hidden_size), np.full(fm.spec.hidden_size, 0.5))
    return build_fused_model(feature_model=fm, layer=2, head=head.eval(), window_s=WINDOW_S)


def _parity(reference, candidate, *, precision: str = "fp32", target: str = "onnx"):
    stack = lambda rows, i: np.stack([np.asarray(r[i], np.float64).reshape(-1) for r in rows])  # noqa: E731
    return compare({n: stack(reference, i) for i, n in enumerate(OUTPUT_NAMES)},
                   {n: stack(candidate, i) for i, n in enumerate(OUTPUT_NAMES)},
                   target=target, precision=precision, comparison="streamed vs offline (test)")


# ---------------------------------------------------------------------------------------
# the streaming head and model, in PyTorch


@pytest.mark.parametrize("gru_form", ["native", "scan", "unrolled"])
@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_head_equals_the_training_head_on_the_joined_frames(gru_form, layers):
    torch.manual_seed(layers)
    head = TCGRU(12, conv_channels=8, gru_hidden=6, gru_layers=layers, embed_dim=16).eval()
    head.set_feature_stats(torch.randn(12), torch.rand(12) + 0.5)
    m, hops = 5, 4
    frames = torch.randn(1, hops * m, 12)
    streaming = TCGRUStreamingHead(head, hop_frames=m, gru_form=gru_form)
    state = [torch.zeros(shape) for shape in streaming.state_shapes().values()]
    for k in range(hops):
        # The newest m frames of a longer window feed the head; the older ones are context only.
        window = torch.cat([torch.randn(1, 7, 12), frames[:, k * m:(k + 1) * m]], dim=1)
        with torch.no_grad():
            avd, logits, embedding, *state = streaming(window, *state)
            offline = head(frames[:, :(k + 1) * m])
        torch.testing.assert_close(logits, offline.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(avd, offline.avd, atol=1e-6, rtol=0)
        torch.testing.assert_close(embedding, offline.embedding, atol=1e-6, rtol=0)
        # The newest frame is provisional (no look-ahead yet): m - 1 finished on the first hop, m after.
        assert float(state[-1]) == (k + 1) * m - 1


def test_streaming_model_equals_the_offline_computation(fused):
    streaming = build_streaming_model(fused, hop_s=HOP_S)
    assert (streaming.hop_samples, streaming.geometry.hop_frames, streaming.geometry.context_samples) == (
        HOP, 10, fused.window_samples - HOP)
    wave = voiced(1.3, seed=1)  # 6 whole hops; the rest is not a hop and is not run

    def step(inputs):
        with torch.no_grad():
            return [t.numpy() for t in streaming(*(torch.from_numpy(x) for x in inputs))]

    initial = [s.numpy() for s in streaming.initial_state()]
    streamed = stream_outputs(step, wave, initial_state=initial, hop_samples=HOP)
    offline = offline_stream_reference(fused, wave, hop_samples=HOP)
    assert len(streamed) == len(offline) == 6
    report = _parity(offline, streamed)
    assert report.passed, report.failures
    assert max(o.max_abs for o in report.outputs) < 1e-5


def test_cached_fm_stream_equals_its_offline_computation_and_differs_from_window_mode(fused):
    """fm_mode='cached': the FM on each hop's frames with a key/value cache equals the offline computation
    (torch.stft log-mel, the encoder's own blocks once over all frames with a block mask and positions since
    the start); that computation is not the window mode's (other positions, other statistics)."""
    streaming = build_streaming_model(fused, hop_s=HOP_S, fm_mode="cached")
    assert streaming.state_shapes()["kv_in"] == (2, 2, 15, 64) and streaming.max_segment_hops == 150
    wave = voiced(1.3, seed=1)

    def step(inputs):
        with torch.no_grad():
            return [t.numpy() for t in streaming(*(torch.from_numpy(x) for x in inputs))]

    streamed = stream_outputs(step, wave, initial_state=[s.numpy() for s in streaming.initial_state()],
                              hop_samples=HOP)
    offline = offline_stream_reference(fused, wave, hop_samples=HOP, fm_mode="cached")
    report = _parity(offline, streamed)
    assert report.passed, report.failures
    assert max(o.max_abs for o in report.outputs) < 1e-5
    window = offline_stream_reference(fused, wave, hop_samples=HOP)
    assert max(np.abs(a[2] - b[2]).max() for a, b in zip(window, offline)) > 1e-3


def test_cached_fm_masks_cache_slots_from_before_the_segment_start(fused):
    """What a segment reset relies on: with ``stats_in`` at zero (a segment's first hop) the key/value cache
    is ignored whatever it holds; once the positions say the cache is full, it is read."""
    streaming = build_streaming_model(fused, hop_s=HOP_S, fm_mode="cached")
    front = streaming.front
    hop = torch.from_numpy(voiced(HOP_S, seed=5)).reshape(1, -1)
    audio = torch.from_numpy(voiced(0.04, seed=6)).reshape(1, -1)
    shapes = front.state_shapes()
    garbage = 3.0 * torch.randn(shapes["kv_in"], generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(shapes["kv_in"])
    fresh = torch.zeros(shapes["stats_in"])
    mid = torch.tensor([[15.0, 20.0, 16000.0, 0.0]])  # 15 frames since the start: every cache slot is valid
    with torch.no_grad():
        first_zeros, *_ = front(hop, audio, zeros, fresh)
        first_garbage, *_ = front(hop, audio, garbage, fresh)
        mid_zeros, *_ = front(hop, audio, zeros, mid)
        mid_garbage, *_ = front(hop, audio, garbage, mid)
    torch.testing.assert_close(first_garbage, first_zeros, atol=1e-6, rtol=0)
    assert (mid_garbage - mid_zeros).abs().max() > 1e-2


@pytest.mark.parametrize(("feature_model", "expected"), [("tiny-whisper", "cached"), ("tiny-wavlm", "window")])
def test_auto_fm_mode_is_cached_for_whisper_and_window_otherwise(feature_model, expected):
    from edge_ser.fm import load_foundation_model

    fm = load_foundation_model(feature_model, random_init=True, seed=0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=1, embed_dim=16).eval()
    fused_model = build_fused_model(feature_model=fm, layer=1, head=head, window_s=WINDOW_S)
    assert build_streaming_model(fused_model, hop_s=HOP_S, fm_mode="auto").fm_mode == expected


@pytest.mark.parametrize(("feature_model", "fm_mode", "expected"), [
    ("tiny-wavlm", "cached", "fm_mode='cached' is built for Whisper only; got 'tiny-wavlm'"),
    ("tiny-whisper", "incremental", "fm_mode='incremental'; expected one of window, cached"),
])
def test_cached_fm_mode_refuses_what_it_cannot_build(feature_model, fm_mode, expected):
    from edge_ser.fm import load_foundation_model

    fm = load_foundation_model(feature_model, random_init=True, seed=0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=1, embed_dim=16).eval()
    fused_model = build_fused_model(feature_model=fm, layer=1, head=head, window_s=WINDOW_S)
    with pytest.raises(ValueError, match=expected):
        build_streaming_model(fused_model, hop_s=HOP_S, fm_mode=fm_mode)


@pytest.mark.parametrize(("hop_s", "expected"), [
    (0.02, "adds \\[1, 1\\] feature frames; expected the same whole number \\(>= 2\\)"),
    (0.03, "multiple of the model's frame step"), (0.3, "hop <= window / 2"),
    (-1.0, "positive number of seconds"),
])
def test_streaming_model_refuses_hops_that_do_not_tile_the_frames(fused, hop_s, expected):
    with pytest.raises(ValueError, match=expected):
        build_streaming_model(fused, hop_s=hop_s)


def test_streaming_model_refuses_a_wrong_hop_length(fused):
    streaming = build_streaming_model(fused, hop_s=HOP_S)
    _, *state = streaming.example_inputs()
    with pytest.raises(AudioError, match=f"expected one hop, \\(1, {HOP}\\)"):
        streaming(torch.zeros(1, HOP + 1), *state)


# ---------------------------------------------------------------------------------------
# artifacts: ExecuTorch and ONNX, converted by the one pipeline, run by the runtime


STREAM_KINDS = [("onnx", "window"), ("executorch", "window"), ("onnx", "cached"), ("executorch", "cached")]


@pytest.fixture(scope="module", params=STREAM_KINDS, ids=[f"{t}-{m}" for t, m in STREAM_KINDS])
def artifact(request, fused, tmp_path_factory):
    from edge_ser.converters.pipeline import convert

    target, fm_mode = request.param
    out = tmp_path_factory.mktemp("stream") / f"{target}-fp32-stream-{fm_mode}"
    result = convert(fused=fused, target=target, precision="fp32", out=out, calibration_waveforms=[],
                     validation_waveforms=[voiced(WINDOW_S, seed=s) for s in (100, 101, 102)],
                     source_info={**fused.source, "run": "unit-test"}, hop_s=HOP_S, fm_mode=fm_mode)
    return out, result


def assert_hop_graph_has_no_portable_copies(manifest: dict) -> None:
    """A cached ExecuTorch stream's per-hop graph has no portable copies of the key/value cache
    (select/stack of kv_in), of the attention operands (matmul's expand_copy) or of the
    reflect padding (arange/abs/sub/index): each was a copy outside XNNPACK that split the delegated
    graph, a fixed cost of every hop (docs/streaming.md, "Cost per hop"). Other kinds: no check."""
    if manifest["target"] != "executorch" or manifest["streaming"]["fm_mode"] != "cached":
        return
    portable = manifest["delegation"]["portable_ops"]
    gone = {"aten_select_copy_int", "aten_expand_copy_default", "aten_arange_start_step", "aten_abs_default",
            "aten_index_tensor", "aten_where_self", "aten_ge_scalar", "aten_reciprocal_default"}
    assert not gone & set(portable), portable
    assert manifest["delegation"]["delegated_share"] > 0.9, manifest["delegation"]


def test_streaming_artifact_manifest_documents_the_state(artifact, fused):
    out, result = artifact
    from edge_ser.runtime.artifact import read_manifest

    manifest = read_manifest(out).raw
    block = manifest["streaming"]
    fm_mode = block["fm_mode"]
    inputs, outputs = stream_io_names(fm_mode)
    assert [i["name"] for i in manifest["inputs"]] == list(inputs)
    assert [o["name"] for o in manifest["outputs"]] == list(outputs)
    assert block["hop_samples"] == HOP and block["hop_frames"] == 10
    assert block["context_samples"] == fused.window_samples - HOP
    shapes = {i["name"]: i["shape"] for i in manifest["inputs"]}
    assert shapes["waveform"] == [1, HOP] and shapes["h_in"] == [2, 1, 16]
    assert [(s["input"], s["output"]) for s in block["state"]] == list(stream_states(fm_mode))
    assert all(s["shape"] == shapes[s["input"]] and s["initial"] == "zeros" for s in block["state"])
    assert [s["input"] for s in block["state"] if s["on_segment_reset"] == "keep"] == ["audio_in"]
    if fm_mode == "window":
        assert shapes["audio_in"] == [1, fused.window_samples - HOP] and "max_segment_hops" not in block
    else:
        # The stem's 640 samples; keys/values of the 15 frames before the hop in both blocks; 4 statistics.
        assert shapes["audio_in"] == [1, 640] and shapes["kv_in"] == [2, 2, 15, 64] and shapes["stats_in"] == [1, 4]
        assert block["max_segment_hops"] == 150 and block["max_segment_s"] == pytest.approx(30.0)
    assert {"foundation_model_per_hop", "estimate", "offline_equivalent"} <= set(block)
    # The conversion gate streamed each validation clip on its own (3 clips x 0.5 s = 3 x 2 hops of
    # 0.2 s) and compared every hop.
    parity = result.parity
    assert parity["ran"] and parity["passed"] and parity["n_utterances"] == 6, parity.get("failures")
    assert "in 3 streams, state carried" in parity["comparison"]
    assert_hop_graph_has_no_portable_copies(manifest)


def test_streamed_artifact_equals_offline_for_chunks_of_any_size(artifact, fused):
    from edge_ser.runtime import load

    out, _ = artifact
    model = load(out)
    wave = voiced(1.45, seed=7)
    stream = model.stream()
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(wave)), size=9, replace=False))
    points = [p for chunk in np.split(wave, cuts) for p in stream.push(chunk)]
    assert len(points) == len(wave) // HOP == 7
    offline = offline_stream_reference(fused, wave, hop_samples=HOP, fm_mode=model.manifest.streaming["fm_mode"])
    streamed = [[np.array([p.prediction.probabilities[c] for c in model.manifest.labels]),
                 np.array([p.prediction.arousal, p.prediction.valence, p.prediction.dominance]),
                 p.prediction.embedding] for p in points]
    report = _parity(offline, streamed, target=model.manifest.target)
    assert report.passed, report.failures
    np.testing.assert_allclose([p.end_s for p in points], np.arange(1, 8) * HOP_S, atol=1e-9)
    assert all(p.segment_start_s == 0.0 for p in points)
    tail = stream.flush()  # 0.05 s left: one zero-padded hop, ending at the last real sample
    assert len(tail) == 1 and tail[0].end_s == pytest.approx(1.45)


def test_segments_restart_the_state(artifact, fused):
    from edge_ser.runtime import load

    out, _ = artifact
    model = load(out)
    wave = voiced(1.6, seed=8)
    points = list(model.stream(segment_s=2 * HOP_S).run([wave]))
    assert [p.segment_start_s for p in points] == pytest.approx([0, 0, 0.4, 0.4, 0.8, 0.8, 1.2, 1.2])
    # The definition: every second hop, all states but the audio context (the FM's left context) restart at zero
    # (in cached mode also the key/value cache and the statistics: positions restart with the segment).
    streaming = build_streaming_model(fused, hop_s=HOP_S, fm_mode=model.manifest.streaming["fm_mode"])
    state = streaming.initial_state()
    expected = []
    for k in range(len(wave) // HOP):
        if k % 2 == 0:
            state = [state[0]] + streaming.initial_state()[1:]
        with torch.no_grad():
            probs, avd, embedding, *state = streaming(torch.from_numpy(wave[k * HOP:(k + 1) * HOP]).reshape(1, -1),
                                                      *state)
        expected.append(embedding.numpy().reshape(-1))
    got = np.stack([p.prediction.embedding for p in points])
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    unsegmented = np.stack([p.prediction.embedding for p in model.stream().run([wave])])
    assert np.abs(unsegmented[3:] - got[3:]).max() > 1e-4  # the reset changed what later hops pool


def test_cached_stream_segments_are_capped_at_the_position_table(artifact):
    """fm_mode='cached' counts positions since the segment start: the stream restarts its segment every 30 s
    (Whisper's 1500 positions) by itself, and refuses a longer segment_s with the limit in the message."""
    from edge_ser.runtime import load

    model = load(artifact[0])
    if model.manifest.streaming["fm_mode"] == "window":
        assert model.stream().segment_hops is None
        return
    assert model.stream().segment_hops == 150  # 150 hops of 0.2 s = 30 s
    assert model.stream(segment_s=10).segment_hops == 50
    with pytest.raises(ValueError, match="longer than this artifact's segments can be \\(30 s"):
        model.stream(segment_s=31)


def test_stream_file_matches_pushing_the_samples(artifact, tmp_path):
    from edge_ser.runtime import load

    out, _ = artifact
    model = load(out)
    wave = voiced(0.9, seed=9)
    path = write_audio(tmp_path / "clip.wav", wave)
    from_file = list(model.stream_file(path, chunk_s=0.07))
    pushed = list(model.stream().run([wave]))
    assert len(from_file) == len(pushed) == 5  # 4 whole hops and a partial one
    for a, b in zip(from_file, pushed):
        assert a.end_s == pytest.approx(b.end_s)
        np.testing.assert_allclose(a.prediction.embedding, b.prediction.embedding, atol=1e-4)


@pytest.mark.parametrize(("chunk", "expected"), [
    (np.zeros(100, np.int16), "integer dtype int16; expected float samples"),
    (np.full(100, np.nan, np.float32), "NaN or inf"),
    (np.full(100, 2.0, np.float32), "expected floats in \\[-1, 1\\]"),
    (np.zeros((2, 3, 4), np.float32), "expected \\(samples,\\) or \\(samples, channels\\)"),
    (np.array(["a"]), "expected a float32 array"),
])
def test_stream_refuses_bad_chunks_with_clear_errors(artifact, chunk, expected):
    from edge_ser.runtime import load

    model = load(artifact[0])
    with pytest.raises(AudioError, match=expected):
        model.stream().push(chunk)


def test_stream_options_and_artifact_kinds_are_checked(artifact, tmp_path):
    from edge_ser.runtime import load

    model = load(artifact[0])
    with pytest.raises(ValueError, match="whole number of hops"):
        model.stream(segment_s=0.3)
    with pytest.raises(ValueError, match="streaming artifact .* Use model.stream"):
        model.predict(voiced(0.5, seed=1), SAMPLE_RATE)
    stereo = np.stack([voiced(0.4, seed=2)] * 2, axis=1)
    assert len(model.stream().push(stereo)) == 2  # downmixed
    resampled = model.stream(sample_rate=8000)
    assert len(resampled.push(voiced(0.8, seed=3)[::2])) >= 1  # 0.4 s at 8 kHz -> about 2 hops at 16 kHz


def test_windowed_artifact_refuses_stream(tmp_path, fused):
    from edge_ser.converters.pipeline import convert
    from edge_ser.runtime import load

    out = tmp_path / "windowed"
    convert(fused=fused, target="onnx", precision="fp32", out=out, calibration_waveforms=[],
            validation_waveforms=[voiced(WINDOW_S, seed=5)], source_info={**fused.source, "run": "unit-test"})
    with pytest.raises(ValueError, match="windowed artifact .* --stream-hop"):
        load(out).stream()


@pytest.fixture(scope="module", params=STREAM_KINDS, ids=[f"{t}-{m}" for t, m in STREAM_KINDS])
def int8_artifact(request, fused, tmp_path_factory):
    from edge_ser.converters.pipeline import convert

    target, fm_mode = request.param
    out = tmp_path_factory.mktemp("stream8") / f"{target}-int8-stream-{fm_mode}"
    result = convert(fused=fused, target=target, precision="int8", out=out,
                     calibration_waveforms=[voiced(WINDOW_S, seed=s) for s in range(4)],
                     validation_waveforms=[voiced(WINDOW_S, seed=s) for s in (100, 101, 102)],
                     source_info={**fused.source, "run": "unit-test"}, hop_s=HOP_S, fm_mode=fm_mode)
    return out, result


def test_int8_streaming_artifact_passes_the_int8_gate_against_the_offline_computation(int8_artifact, fused):
    from edge_ser.runtime import load
    from edge_ser.runtime.tolerances import QUANTIZED_8BIT

    out, result = int8_artifact
    parity, manifest = result.parity, result.manifest
    assert parity["ran"] and parity["passed"] and parity["n_utterances"] == 6, parity.get("failures")
    assert "in 3 streams, state carried" in parity["comparison"]
    assert parity["tolerance"]["min_top1_agreement"] == QUANTIZED_8BIT.min_top1_agreement
    assert manifest["precision"] == "int8" and manifest["quantization"]["scheme"] != "none"
    assert_hop_graph_has_no_portable_copies(manifest)
    assert [s["input"] for s in manifest["streaming"]["state"]] == [i for i, _ in
                                                                     stream_states(manifest["streaming"]["fm_mode"])]
    # Really quantized: the streamed outputs are off the float reference by far more than fp32 rounding
    # (the fp32 streaming artifacts stay near 1e-7), yet close at the task level.
    errors = {o["name"]: o["max_abs"] for o in parity["outputs"]}
    assert errors["probs"] > 1e-4, errors
    assert min(o["cosine"] for o in parity["outputs"]) > 0.999
    if manifest["target"] == "onnx":
        assert manifest["backend"]["lowering"]["ops"].get("MatMulInteger", 0) > 0
        # Streamed under both emulated int8 accumulations, as windowed int8 artifacts are.
        paths = parity["kernel_paths"]
        assert paths["int32-exact"]["passed"] and paths["u8s8-int16-pairs"]["passed"]
    # The runtime streams it like an fp32 one.
    model = load(out)
    points = list(model.stream().run([voiced(0.8, seed=4)]))
    assert len(points) == 4 and all(np.isfinite(p.prediction.embedding).all() for p in points)


def test_int8_stream_gate_compares_every_hop(int8_artifact, fused):
    """The int8 gate judges each streamed hop: the artifact's own stream passes, the same stream with
    the top two classes of every hop swapped is refused. (Dropping the carried state is not a usable
    negative here: the tiny random head's outputs barely depend on it, probs move by ~3e-2 only.)"""
    from edge_ser.converters.pipeline import validate_stream
    from edge_ser.runtime import load

    out, _ = int8_artifact
    model = load(out)
    streaming = build_streaming_model(fused, hop_s=HOP_S, fm_mode=model.manifest.streaming["fm_mode"])
    validation = [voiced(WINDOW_S, seed=s) for s in (100, 101, 102)]

    def swapped(inputs):
        outputs = model.run_stream_hop(inputs[0], list(inputs[1:]))
        probs = outputs[0].copy()
        top = np.argsort(probs.reshape(-1))[::-1][:2]
        probs[0, top[0]], probs[0, top[1]] = probs[0, top[1]], probs[0, top[0]]
        return [probs, *outputs[1:]]

    honest = validate_stream(lambda inputs: model.run_stream_hop(inputs[0], list(inputs[1:])), fused, streaming,
                             validation, target=model.manifest.target, precision="int8")
    assert honest.passed, honest.failures
    report = validate_stream(swapped, fused, streaming, validation, target=model.manifest.target, precision="int8")
    assert not report.passed and any("top-1" in f or "top1" in f for f in report.failures), report.failures


# ---------------------------------------------------------------------------------------
# the CLI


def test_cli_predict_stream_prints_one_line_per_hop(artifact, tmp_path):
    from click.testing import CliRunner

    from edge_ser.cli import root
    from edge_ser.runtime import load

    out, _ = artifact
    wave = voiced(0.9, seed=11)
    path = write_audio(tmp_path / "talk.wav", wave)
    result = CliRunner().invoke(root, ["predict", "--artifact", str(out), str(path), "--stream", "--top", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    expected = list(load(out).stream().run([wave]))
    assert len(lines) == len(expected) == 5
    for line, point in zip(lines, expected):
        assert line.startswith(f"talk.wav {point.start_s:6.2f}-{point.end_s:6.2f}s (since 0.00s)  "
                               f"{point.prediction.label} ")
    result = CliRunner().invoke(root, ["predict", "--artifact", str(out), str(path), "--stream", "--segment-s", "0.4"])
    assert result.exit_code == 0, result.output
    assert "(since 0.40s)" in result.output.splitlines()[2]


@pytest.mark.parametrize(("args", "message"), [
    (["--segment-s", "0.4"], "--segment-s applies to --stream only"),
    (["--stream", "--timeline", "0.2"], "pass one of them"),
    (["--stream", "--segment-s", "0.3"], "whole number of hops"),
])
def test_cli_predict_stream_refuses_bad_options(artifact, tmp_path, args, message):
    from click.testing import CliRunner

    from edge_ser.cli import root

    path = write_audio(tmp_path / "talk.wav", voiced(0.5, seed=12))
    result = CliRunner().invoke(root, ["predict", "--artifact", str(artifact[0]), str(path), *args])
    assert result.exit_code != 0
    assert message in result.output


@pytest.mark.parametrize("fm_mode", ["window", "cached"])
def test_coreml_streaming_program_has_the_state_inputs_and_outputs(fused, tmp_path, fm_mode):
    """Core ML cannot predict off macOS: the converted program is checked structurally (names, shapes)."""
    import sys

    from edge_ser.converters.pipeline import convert

    if sys.platform == "darwin":
        pytest.skip("on macOS the streamed parity check runs instead (the ExecuTorch/ONNX tests cover it here)")
    out = tmp_path / "coreml-stream"
    result = convert(fused=fused, target="coreml", precision="fp32", out=out, calibration_waveforms=[],
                     validation_waveforms=[voiced(WINDOW_S, seed=5)], source_info={**fused.source, "run": "t"},
                     hop_s=HOP_S, fm_mode=fm_mode)
    assert result.parity["ran"] is False
    io = json.loads((out / "parity.json").read_text())["verification"]["io"]
    assert io["passed"], io["problems"]
    inputs, outputs = stream_io_names(fm_mode)
    assert [i["name"] for i in io["inputs"]] == list(inputs)
    assert [o["name"] for o in io["outputs"]] == list(outputs)
    shapes = {i["name"]: i["shape"] for i in io["inputs"]}
    assert shapes["waveform"] == [1, HOP] and shapes["h_in"] == [2, 1, 16] and shapes["count_in"] == [1, 1]
    assert read_manifest_streaming(out)["hop_samples"] == HOP


def read_manifest_streaming(out):
    from edge_ser.runtime.artifact import read_manifest

    return read_manifest(out).streaming


@pytest.mark.parametrize(("args", "message"), [
    (["--stream-fm", "cached"], "--stream-fm applies to streaming artifacts; pass --stream-hop too"),
    (["--stream-hop", "1.0", "--stream-fm", "incremental"], "'incremental' is not one of 'auto', 'window', 'cached'"),
])
def test_cli_convert_checks_the_stream_fm_option(tmp_path, args, message):
    from click.testing import CliRunner

    from edge_ser.cli import root

    result = CliRunner().invoke(root, ["convert", "--run", str(tmp_path), "--target", "onnx", "--out",
                                       str(tmp_path / "a"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "a").exists()
