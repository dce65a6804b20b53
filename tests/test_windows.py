"""Device windows: one windowing rule for runtime and training, window corpora, window training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_ser.audio import load_audio
from edge_ser.cli import root
from edge_ser.windowing import fit_window, span_weights, window_spans

from test_trainer import _write_cache, synthetic_table_and_frames


def test_window_spans_cover_the_clip_and_end_at_its_end():
    assert window_spans(100, 300) == [(0, 100)]
    assert window_spans(300, 300) == [(0, 300)]
    assert window_spans(700, 300) == [(0, 300), (300, 600), (400, 700)]
    assert window_spans(700, 300, hop=200) == [(0, 300), (200, 500), (400, 700)]
    assert np.allclose(span_weights([(0, 300), (300, 600), (400, 700)]), 1 / 3)
    assert np.allclose(span_weights([(0, 100)]), 1.0)
    with pytest.raises(ValueError, match="window"):
        window_spans(10, 0)


def test_fit_window_repeats_or_zero_pads_short_clips():
    clip = np.arange(1, 4, dtype=np.float32)
    assert fit_window(clip, 7, pad="repeat").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert fit_window(clip, 7, pad="zeros").tolist() == [1, 2, 3, 0, 0, 0, 0]
    assert fit_window(np.arange(10.0), 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="pad"):
        fit_window(clip, 7, pad="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        fit_window(clip[:0], 7)


@pytest.fixture(scope="module")
def window_corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("win")
    runner = CliRunner()
    assert runner.invoke(root, ["data", "synth", "--out", str(base / "syn"), "--speakers", "3",
                                "--per-speaker", "4"]).exit_code == 0
    result = runner.invoke(root, ["data", "windows", "--corpus-dir", str(base / "syn"), "--out", str(base / "win"),
                                  "--window-s", "1.0", "--random-crops", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    return base


def test_window_corpus_holds_the_runtime_windows_and_seeded_random_ones(window_corpus):
    from edge_ser.data.table import load_corpus
    from edge_ser.data.windows import make_window_corpus, window_rows_of

    syn, win = load_corpus(window_corpus / "syn"), load_corpus(window_corpus / "win")
    parents, roles, weights = window_rows_of(win.table["extras"])
    assert set(parents) == set(syn.table["utt_id"])
    for _, row in syn.table.iterrows():
        clip = load_audio(syn.audio_path(row))
        mine = win.table[parents == row["utt_id"]]
        info = [json.loads(e)["window"] for e in mine["extras"]]
        device = [(w["start"], w["end"]) for w in info if w["role"] == "device"]
        assert device == window_spans(len(clip), 16_000)  # exactly what EmotionModel.predict runs
        assert np.isclose(sum(w["weight"] for w in info if w["role"] == "device"), 1.0)
        random = [w for w in info if w["role"] == "random"]
        assert len(random) <= (2 if len(clip) > 16_000 else 0)
        assert len({w["start"] for w in info}) == len(info)  # no window twice
        for (_, crop), w in zip(mine.iterrows(), info):
            audio = load_audio(win.audio_path(crop))
            assert len(audio) == 16_000
            expected = fit_window(clip[w["start"]:w["end"]], 16_000, pad="repeat")
            assert np.allclose(audio, expected, atol=1 / 32768), "the window audio differs from the runtime's window"
            assert crop["label"] == row["label"] and crop["speaker"] == row["speaker"] and crop["split"] == row["split"]
    assert (roles == "random").any() and np.all(weights[roles == "random"] == 0)
    # Random positions depend on (seed, utt_id) only.
    again = make_window_corpus(corpus_dir=window_corpus / "syn", out=window_corpus / "win-again", window_s=1.0,
                               progress=False)
    other = make_window_corpus(corpus_dir=window_corpus / "syn", out=window_corpus / "win-seed1", window_s=1.0,
                               seed=1, progress=False)
    assert again.table["utt_id"].tolist() == win.table["utt_id"].tolist()
    assert other.table["utt_id"].tolist() != win.table["utt_id"].tolist()
    with pytest.raises(ValueError, match="window_s"):
        make_window_corpus(corpus_dir=window_corpus / "syn", out=window_corpus / "bad", window_s=0.0, progress=False)


def _window_cache(tmp_path, n_parents: int = 40, folder: str = "feats", prefix: str = ""):
    """A feature cache of a made-up window corpus: each utterance has 1-2 device and 0-2 random windows.

    ``prefix``: put before every utt_id (an augmented copy of the same utterances).
    """
    table, frames = synthetic_table_and_frames(n_parents, seed=2)
    rows, crop_frames = [], []
    rng = np.random.default_rng(0)
    for i, row in table.iterrows():
        n_device, n_random = int(rng.integers(1, 3)), int(rng.integers(0, 3))
        for j in range(n_device + n_random):
            role = "device" if j < n_device else "random"
            new = row.to_dict()
            new["utt_id"] = f"{prefix}{row['utt_id']}@{j}"
            new["extras"] = json.dumps({"window": {"parent": prefix + row["utt_id"], "start": j, "end": j + 1, "role": role,
                                                   "weight": 1.0 / n_device if role == "device" else 0.0}})
            rows.append(new)
            crop_frames.append(frames[i] + 0.01 * j)
    import pandas as pd

    crops = pd.DataFrame(rows)
    _write_cache(tmp_path / folder, crops, crop_frames)
    return tmp_path / folder, crops


def test_windowed_source_draws_one_window_per_utterance_and_keeps_random_ones_out_of_evaluation(tmp_path):
    from edge_ser.errors import ManifestError
    from edge_ser.train.dataset import (
        WINDOW_EXCLUDED, CacheFeatureSource, WindowedFeatureSource, fold_splits, open_training_source, with_splits,
    )

    cache, crops = _window_cache(tmp_path)
    source = open_training_source(cache, layer=3, windows=True)
    assert isinstance(source, WindowedFeatureSource) and source.info["windows"] is True
    train = np.flatnonzero(np.asarray(source.splits) == "train")
    drawn = source.epoch_rows(train, seed=0, epoch=1)
    parents = source.parents
    assert len(drawn) == len(set(parents[train])) and len(set(parents[drawn])) == len(drawn)
    assert np.array_equal(drawn, source.epoch_rows(train, seed=0, epoch=1))
    seen = set()
    for epoch in range(1, 30):
        seen.update(source.epoch_rows(train, seed=0, epoch=epoch).tolist())
    assert seen == set(train.tolist())  # over epochs every window of the train split is used
    evaluated = np.asarray(source.splits) != "train"
    assert set(source.roles[evaluated & (np.asarray(source.splits) != WINDOW_EXCLUDED)]) == {"device"}
    resplit = with_splits(source, fold_splits(np.asarray(source.folds), fold=0))
    outside = np.asarray(resplit.splits) != "train"
    assert set(np.asarray(resplit.splits)[outside & (source.roles == "random")]) <= {WINDOW_EXCLUDED}
    with pytest.raises(ManifestError, match="window corpus"):
        WindowedFeatureSource(CacheFeatureSource(_plain_cache(tmp_path), layer=3))


def test_windowed_source_with_augmented_window_copies_trains_on_copies_of_train_utterances_only(tmp_path):
    from edge_ser.train.dataset import (
        AUGMENT_EXCLUDED, WINDOW_EXCLUDED, fold_splits, open_training_source, with_splits,
    )

    cache, _ = _window_cache(tmp_path)
    copy, _ = _window_cache(tmp_path, folder="copy", prefix="aug:")
    plain = open_training_source(cache, layer=3, windows=True)
    source = open_training_source(cache, layer=3, windows=True, augment=[copy])
    n = len(plain)
    assert len(source) == 2 * n and source.info["windows"] is True and len(source.info["augmented_copies"]) == 1
    for resplit in (source, with_splits(source, fold_splits(np.asarray(source.folds), fold=1))):
        splits = np.asarray(resplit.splits)
        base_splits, copy_splits = splits[:n], splits[n:]
        # copies train where their original trains, and never reach validation or test
        assert set(copy_splits) <= {"train", AUGMENT_EXCLUDED}
        assert np.array_equal(copy_splits == "train", base_splits == "train")
        assert set(base_splits[source.roles[:n] == "random"]) <= {"train", WINDOW_EXCLUDED}
        evaluated = np.isin(splits, ["valid", "test"])
        assert evaluated[:n].any() and not evaluated[n:].any()
        assert set(source.roles[evaluated]) == {"device"}
        train = np.flatnonzero(splits == "train")
        drawn = source.epoch_rows(train, seed=0, epoch=3)
        # one window per utterance and epoch, an original and its copy each drawn once
        originals, copies = drawn[drawn < n], drawn[drawn >= n]
        assert len(originals) == len(set(source.parents[train[train < n]]))
        assert len(copies) == len(set(source.parents[train[train >= n]])) == len(originals)
        assert all(p.startswith("aug:") for p in source.parents[copies])
    # frames come from the right cache
    assert np.array_equal(source.frames(n), open_training_source(copy, layer=3, windows=True).frames(0))
    # a whole-clip copy next to window features is refused, saying how to window it
    from edge_ser.errors import ManifestError

    with pytest.raises(ManifestError, match="every --augment copy must be windowed too"):
        open_training_source(cache, layer=3, windows=True, augment=[_plain_cache(tmp_path)])


def _plain_cache(tmp_path):
    table, frames = synthetic_table_and_frames(12, seed=3)
    _write_cache(tmp_path / "plain", table, frames)
    return tmp_path / "plain"


def test_train_on_windows_from_the_cli_records_it(tmp_path):
    cache, _ = _window_cache(tmp_path, n_parents=16)
    runner = CliRunner()
    result = runner.invoke(root, ["train", "--features", str(cache), "--out", str(tmp_path / "run"), "--layer", "3",
                                  "--windows", "--epochs", "1", "--batch-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["features"]["windows"] is True
    plain = runner.invoke(root, ["train", "--features", str(_plain_cache(tmp_path)), "--out", str(tmp_path / "r2"),
                                 "--layer", "3", "--windows", "--epochs", "1", "--no-progress"])
    assert plain.exit_code != 0 and "edge-ser data windows" in plain.output, plain.output
