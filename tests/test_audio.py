"""edge_ser.audio: loading, validation, resampling, downmixing, writing (generated audio only)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge_ser.audio import (
    MIN_DURATION_S,
    audio_duration_s,
    check_sample_rate,
    load_audio,
    resample,
    to_mono,
    validate_waveform,
    write_audio,
)
from edge_ser.errors import AudioError
from edge_ser.labels import SAMPLE_RATE


def tone(seconds: float = 0.5, *, sr: int = SAMPLE_RATE, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---- validate_waveform: good input -------------------------------------------------------

def test_valid_mono_passes_through_unchanged():
    x = tone()
    y = validate_waveform(x, sample_rate=SAMPLE_RATE)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("layout", ["samples_channels", "channels_samples"])
def test_stereo_is_downmixed_in_either_layout_with_a_note(layout, caplog):
    left, right = tone(amp=0.2), tone(amp=0.4, freq=330.0)
    stereo = np.stack([left, right], axis=1 if layout == "samples_channels" else 0)
    with caplog.at_level(logging.INFO, logger="edge_ser.audio"):
        y = validate_waveform(stereo, sample_rate=SAMPLE_RATE)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    assert "2 channels averaged to mono" in caplog.text


def test_int16_input_is_scaled_to_unit_range():
    x = (tone() * 32767).astype(np.int16)
    y = validate_waveform(x, sample_rate=SAMPLE_RATE)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x / 32768.0, atol=1e-7)


def test_other_sample_rate_is_resampled_with_a_note(caplog):
    x = tone(1.0, sr=48_000)
    with caplog.at_level(logging.INFO, logger="edge_ser.audio"):
        y = validate_waveform(x, sample_rate=48_000)
    assert y.shape == (SAMPLE_RATE,)
    assert "48000 Hz -> 16000 Hz" in caplog.text
    # the 220 Hz tone survives: compare with the tone generated at 16 kHz away from the edges
    np.testing.assert_allclose(y[1000:-1000], tone(1.0)[1000:-1000], atol=2e-3)


def test_clipping_warns_but_does_not_fail(caplog, monkeypatch):
    import edge_ser.audio

    monkeypatch.setitem(edge_ser.audio._clip_warnings, "count", 0)
    x = np.clip(tone(amp=3.0), -1.0, 1.0)
    with caplog.at_level(logging.WARNING, logger="edge_ser.audio"):
        y = validate_waveform(x, sample_rate=SAMPLE_RATE)
    assert y.shape == x.shape
    assert "clipped" in caplog.text


def test_clipping_warnings_are_limited_per_process(caplog, monkeypatch):
    """A louder corpus copy clips in hundreds of files: the first few warn, the rest go to DEBUG."""
    import edge_ser.audio

    monkeypatch.setitem(edge_ser.audio._clip_warnings, "count", 0)
    x = np.clip(tone(amp=3.0), -1.0, 1.0)
    with caplog.at_level(logging.WARNING, logger="edge_ser.audio"):
        for _ in range(10):
            validate_waveform(x, sample_rate=SAMPLE_RATE)
    lines = [r for r in caplog.records if "clipped" in r.getMessage()]
    assert len(lines) == edge_ser.audio.CLIP_WARNINGS_SHOWN
    assert "further clipping warnings" in lines[-1].getMessage()


def test_float_int16_range_is_rescaled_with_a_warning(caplog):
    x = np.round(tone() * 20000).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="edge_ser.audio"):
        y = validate_waveform(x, sample_rate=SAMPLE_RATE)
    np.testing.assert_allclose(y, x / 32768.0, atol=1e-7)
    assert "looks like int16" in caplog.text


# ---- validate_waveform: every bad input has an error that says what and how ----------------

@pytest.mark.parametrize(
    ("x", "kwargs", "pattern"),
    [
        (np.array(["a", "b"]), {}, r"dtype <U1.*expected a numeric array"),
        (np.zeros(0, dtype=np.float32), {}, r"empty .*expected at least one sample"),
        (np.zeros((2, 3, 1000), dtype=np.float32) + 0.1, {}, r"3 dimensions .*shape \(2, 3, 1000\)"),
        (np.full((100, 200), 0.1, dtype=np.float32), {}, r"cannot tell which axis holds channels"),
        (np.full((4, 4), 0.1, dtype=np.float32), {}, r"cannot tell which axis"),
        (np.stack([tone(), tone()]), {"strict": True}, r"2 channels .*expected mono.*to_mono"),
        (np.where(np.arange(8000) == 5, np.nan, tone()).astype(np.float32), {}, r"1 NaN/inf sample"),
        (np.where(np.arange(8000) == 5, np.inf, tone()).astype(np.float32), {}, r"NaN/inf"),
        (np.zeros(8000, dtype=np.float32), {}, r"digital silence"),
        (tone(amp=1.7), {}, r"not normalised: peak \|x\| = 1\.7.*expected float samples in \[-1, 1\]"),
        (np.round(tone() * 20000).astype(np.float32), {"strict": True}, r"looks like int16 PCM"),
        (tone(1.0, sr=48_000), {"strict": True, "sample_rate": 48_000}, r"48000 Hz; expected 16000 Hz.*resample"),
        (tone(0.1), {"min_duration_s": MIN_DURATION_S}, r"0\.100 s long .*at least 0\.250 s.*np\.pad"),
        (tone(), {"sample_rate": 0}, r"sample_rate=0 is not a positive integer"),
    ],
)
def test_bad_waveforms_raise_clear_errors(x, kwargs, pattern):
    kwargs = {"sample_rate": SAMPLE_RATE, **kwargs}
    with pytest.raises(AudioError, match=pattern):
        validate_waveform(x, **kwargs)


def test_quiet_but_nonzero_speech_is_not_silence():
    y = validate_waveform(tone(amp=1e-3), sample_rate=SAMPLE_RATE)
    assert np.max(np.abs(y)) > 0


def test_error_names_the_waveform():
    with pytest.raises(AudioError, match="utt42 is empty"):
        validate_waveform(np.zeros(0), sample_rate=SAMPLE_RATE, name="utt42")


# ---- to_mono / resample ---------------------------------------------------------------------

def test_to_mono_layouts_agree_and_rejects_3d():
    stereo = np.stack([tone(amp=0.1), tone(amp=0.3)], axis=1)
    np.testing.assert_allclose(to_mono(stereo), to_mono(stereo.T), atol=0)
    np.testing.assert_allclose(to_mono(stereo), tone(amp=0.2), atol=1e-6)
    with pytest.raises(AudioError, match="3 dimensions"):
        to_mono(np.zeros((1, 2, 3)))


def test_resample_length_and_identity():
    x = tone(0.5, sr=22_050)
    y = resample(x, orig_sr=22_050, target_sr=SAMPLE_RATE)
    assert y.dtype == np.float32 and abs(len(y) - 8000) <= 1
    np.testing.assert_array_equal(resample(x, orig_sr=8000, target_sr=8000), x)
    with pytest.raises(AudioError, match="orig_sr=-1"):
        resample(x, orig_sr=-1, target_sr=SAMPLE_RATE)


# ---- files --------------------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "atol"), [(".flac", 1.0 / 32768 + 1e-7), (".wav", 0.0)])
def test_write_then_load_round_trip(tmp_path, suffix, atol):
    x = tone()
    path = write_audio(tmp_path / f"a{suffix}", x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}"]  # no temp file left behind
    y = load_audio(path)
    np.testing.assert_allclose(y, x, atol=atol)
    assert audio_duration_s(path) == pytest.approx(0.5)


def test_load_stereo_file_downmix_or_strict_error(tmp_path, caplog):
    path = write_audio(tmp_path / "st.flac", np.stack([tone(amp=0.2), tone(amp=0.4)], axis=1))
    with caplog.at_level(logging.INFO, logger="edge_ser.audio"):
        y = load_audio(path)
    assert y.ndim == 1 and "2 channels averaged" in caplog.text
    np.testing.assert_allclose(y, tone(amp=0.3), atol=2e-4)
    with pytest.raises(AudioError, match=r"st\.flac has 2 channels; expected mono"):
        load_audio(path, strict=True)


def test_load_resamples_other_rates(tmp_path):
    path = write_audio(tmp_path / "hi.wav", tone(1.0, sr=44_100), sample_rate=44_100)
    assert load_audio(path).shape == (SAMPLE_RATE,)
    with pytest.raises(AudioError, match="44100 Hz; expected 16000 Hz"):
        load_audio(path, strict=True)


def test_load_too_short_file(tmp_path):
    path = write_audio(tmp_path / "short.flac", tone(0.05))
    with pytest.raises(AudioError, match=r"short\.flac is 0\.050 s long"):
        load_audio(path, min_duration_s=MIN_DURATION_S)


def test_load_silent_file(tmp_path):
    path = write_audio(tmp_path / "zero.wav", np.zeros(8000, dtype=np.float32))
    with pytest.raises(AudioError, match=r"zero\.wav is digital silence"):
        load_audio(path)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_corrupt_file_error_names_file_and_libsndfile_reason(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(AudioError, match=rf"cannot read audio file .*garbage\{suffix}: libsndfile says .*re-encode"):
        load_audio(path)
    with pytest.raises(AudioError, match="cannot read the header"):
        audio_duration_s(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(AudioError, match=r"suffix '\.mp3' is not supported"):
        write_audio(tmp_path / "a.mp3", tone())
    with pytest.raises(AudioError, match="would clip"):
        write_audio(tmp_path / "a.flac", tone(amp=2.0))
    with pytest.raises(AudioError, match="NaN/inf"):
        write_audio(tmp_path / "a.wav", np.full(100, np.nan, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


# ---- limits: implausible sample rates and durations (issue 17 items 4 and 7) -------------

def _header_claims(path, rate: int) -> None:
    """Rewrite a PCM WAV header's sample rate (and byte rate), as a broken or hostile file has it."""
    import struct

    data = bytearray(path.read_bytes())
    data[24:28], data[28:32] = struct.pack("<I", rate), struct.pack("<I", rate * 2)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rate", [1, 100, 3999, 400_000])
def test_a_header_with_an_implausible_rate_is_refused_before_decoding(tmp_path, rate):
    path = write_audio(tmp_path / "odd.wav", tone(1.5), subtype="PCM_16")  # 48 KB
    _header_claims(path, rate)
    pattern = (rf"odd\.wav: sample_rate={rate} Hz is outside the range edge-ser accepts; expected an integer number "
               r"of Hz from 4000 to 384000, e.g. 16000\. A header claiming such a rate is broken .*re-encode")
    with pytest.raises(AudioError, match=pattern):
        load_audio(path)  # was resampled 16,000-fold at 1 Hz: 3.7 GB and still running at 60 s
    with pytest.raises(AudioError, match=pattern):
        audio_duration_s(path)


def test_audio_longer_than_the_limit_is_refused_before_decoding(tmp_path):
    path = write_audio(tmp_path / "long.flac", tone(3.0))
    with pytest.raises(AudioError, match=r"long\.flac is 3\.0 s long \(48000 samples at 16000 Hz\); expected at most "
                                         r"2 s per call\. Read longer recordings block by block with "
                                         r"EmotionModel\.timeline_file\(path\).*max_duration_s=None"):
        load_audio(path, max_duration_s=2.0)
    assert load_audio(path, max_duration_s=None).shape == (48_000,)
    with pytest.raises(AudioError, match=r"waveform is 3\.0 s long .*expected at most 2 s"):
        validate_waveform(tone(3.0), sample_rate=SAMPLE_RATE, max_duration_s=2.0)


@pytest.mark.parametrize("rate, reason", [(16000.5, "is not a whole number of Hz"), (True, "is not a sample rate"),
                                          (1, "is outside the range")])
def test_sample_rate_arguments_are_checked(rate, reason):
    with pytest.raises(AudioError, match=rf"sample_rate={rate!r}.* {reason}"):
        check_sample_rate(rate)
    with pytest.raises(AudioError):
        validate_waveform(tone(), sample_rate=rate)
    assert check_sample_rate(16000.0) == 16000 and check_sample_rate(np.int64(8000)) == 8000
