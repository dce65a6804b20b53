"""read_versioned_manifest: the one refusal path of the corpus, feature-cache and artifact readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_ser import __version__
from edge_ser.errors import CorpusError, ManifestError
from edge_ser.io import read_versioned_manifest

FIX = "Re-create it with `edge-ser data prepare`."


def _read(path, **kwargs):
    return read_versioned_manifest(path, kind="a prepared corpus folder", expected_format="edge-ser-corpus",
                                   supported_versions=(1,), fix=FIX, **kwargs)


def _write(folder: Path, manifest: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return path


def test_reads_a_supported_manifest(tmp_path):
    path = _write(tmp_path / "c", {"format": "edge-ser-corpus", "format_version": 1, "corpus": "x"})
    assert _read(path)["corpus"] == "x"


def test_wrong_format_says_what_was_found_and_expected(tmp_path):
    path = _write(tmp_path / "c", {"format": "edge-ser-features", "format_version": 1})
    with pytest.raises(ManifestError) as info:
        _read(path)
    message = str(info.value)
    assert str(path) in message
    assert "has format 'edge-ser-features' version 1; expected 'edge-ser-corpus' version 1" in message
    assert "a prepared corpus folder" in message and message.endswith(FIX)


def test_newer_version_names_both_versions_and_the_writer(tmp_path):
    path = _write(tmp_path / "c", {"format": "edge-ser-corpus", "format_version": 2, "edge_ser_version": "9.0.0"})
    with pytest.raises(ManifestError) as info:
        _read(path)
    message = str(info.value)
    assert f"{path} has format 'edge-ser-corpus' version 2; expected 'edge-ser-corpus' version 1. {FIX}" in message
    assert "upgrade edge-ser" in message and "'9.0.0'" in message
    with pytest.raises(ManifestError, match=rf"version 2; this edge-ser \({__version__}\) reads 'edge-ser-corpus'"):
        _read(path, name_reader=True)


def test_unreadable_json_says_where_and_why(tmp_path):
    path = _write(tmp_path / "c", '{"format": "edge-ser-corpus",')
    with pytest.raises(ManifestError) as info:
        _read(path)
    message = str(info.value)
    assert f"{path} is not valid JSON" in message and "line 1" in message
    assert "a prepared corpus folder" in message and message.endswith(FIX)
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="holds a JSON list; expected an object"):
        _read(path)


def test_missing_file_names_the_folder_and_the_fix(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(ManifestError) as info:
        _read(tmp_path / "c" / "manifest.json")
    assert str(info.value) == f"{tmp_path / 'c'} has no manifest.json; expected a prepared corpus folder. {FIX}"
    with pytest.raises(CorpusError, match="has no manifest.json"):
        _read(tmp_path / "c" / "manifest.json", missing_error=CorpusError)
