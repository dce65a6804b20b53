"""Read a CTranslate2 Whisper ``model.bin`` and rebuild the transformers Whisper encoder.

CTranslate2's binary format (version 6, written by ``ctranslate2.specs.ModelSpec``),
little-endian throughout::

    uint32 binary_version          (6)
    string spec_name               ("WhisperSpec")
    uint32 spec_revision
    uint32 n_variables
    n_variables x:
        string name                ("encoder/layer_0/self_attention/linear_0/weight")
        uint8  rank
        uint32 dims[rank]
        uint8  dtype id            (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
        uint32 n_bytes
        bytes  data[n_bytes]       (row-major)
    uint32 n_aliases
    n_aliases x: string alias, string target_name

where ``string`` is ``uint16 length (including the trailing NUL), bytes, NUL``.

Encoder mapping (CTranslate2 name -> transformers ``WhisperEncoder`` name):

==================================================  ===========================================
``encoder/conv{1,2}/{weight,bias}``                   ``conv{1,2}.{weight,bias}``
``encoder/position_encodings/encodings``              ``embed_positions.weight``
``encoder/layer_i/self_attention/layer_norm/*``       ``layers.i.self_attn_layer_norm.*``
``encoder/layer_i/self_attention/linear_0/*``         fused [q; k; v] -> ``self_attn.{q,k,v}_proj``
``encoder/layer_i/self_attention/linear_1/*``         ``self_attn.out_proj.*``
``encoder/layer_i/ffn/layer_norm/*``                  ``layers.i.final_layer_norm.*``
``encoder/layer_i/ffn/linear_{0,1}/*``                ``layers.i.fc{1,2}.*``
``encoder/layer_norm/{gamma,beta}``                   ``layer_norm.{weight,bias}``
==================================================  ===========================================

Whisper's key projection has no bias; CTranslate2 stores zeros in its slot of the
fused bias. A non-zero key bias would not change attention either (it adds the same
``q . b`` to every logit of a query, which softmax removes), so it is dropped and its
size is reported.

Converted weights are cached as ``encoder.safetensors`` in the edge-ser cache
(``$EDGE_SER_CACHE``, default ``~/.cache/edge-ser``): under ``ct2-whisper/<sha256 of model.bin>/``,
or next to ``model.bin`` when that folder is itself in the edge-ser cache (the whisper-base extra
is joined there). A user's own weights folder is never written to. A cached file is used only
when ``model.bin`` still has the sha256 it was converted from and the cached file has the sha256
recorded next to it (``encoder.safetensors.sha256``); anything else is converted again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from edge_ser.errors import EdgeSerError
from edge_ser.io import atomic_path, sha256_file

logger = logging.getLogger(__name__)

CT2_BINARY_VERSION: int = 6
"""The only CTranslate2 binary layout this reader accepts (ctranslate2 >= 3)."""

CACHE_FILE_NAME: str = "encoder.safetensors"
CACHE_DIGEST_SUFFIX: str = ".sha256"
"""The cached file's own sha256 sits next to it in ``encoder.safetensors.sha256``."""
_CACHE_FORMAT: str = "edge-ser-ct2-whisper-encoder"
_CACHE_FORMAT_VERSION: str = "1"

_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class CTranslate2FormatError(EdgeSerError, ValueError):
    """A CTranslate2 model file is not a readable Whisper model of the supported format."""


@dataclass(frozen=True)
class CT2Variable:
    """One stored variable: where its bytes are in ``model.bin`` and what they hold."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class CT2ModelIndex:
    """The header of a ``model.bin``: variables (without their data) and aliases."""

    path: str
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: tuple[CT2Variable, ...]
    aliases: tuple[tuple[str, str], ...]

    def variable(self, name: str) -> CT2Variable:
        """The variable called `name`, following aliases."""
        lookup = {var.name: var for var in self.variables}
        alias = dict(self.aliases)
        seen = set()
        while name not in lookup and name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        if name not in lookup:
            raise CTranslate2FormatError(
                f"{self.path} has no variable {name!r} ({len(self.variables)} variables, e.g. "
                f"{[v.name for v in self.variables[:3]]}); expected a CTranslate2 Whisper model "
                "converted with ct2-transformers-converter."
            )
        return lookup[name]


@dataclass(frozen=True)
class WhisperEncoderDims:
    """Encoder sizes read from a CTranslate2 Whisper model."""

    n_mels: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_size: int
    max_positions: int


@dataclass(frozen=True)
class CT2ConversionInfo:
    """Where converted weights came from and how long loading took."""

    model_bin: str
    sha256: str
    source_dtype: str
    dims: WhisperEncoderDims
    cache_path: str | None
    from_cache: bool
    load_seconds: float
    key_bias_max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# Binary reader


def _read_exact(handle: BinaryIO, n: int, path: Path) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise CTranslate2FormatError(
            f"{path} ends early at byte {handle.tell()} (wanted {n} more bytes); the file is truncated. "
            "Re-create it (for the whisper-base extra, delete the edge-ser cache folder and load again)."
        )
    return data


def _read_uint(handle: BinaryIO, fmt: str, path: Path) -> int:
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, _read_exact(handle, size, path))[0]


def _read_string(handle: BinaryIO, path: Path) -> str:
    length = _read_uint(handle, "H", path)
    raw = _read_exact(handle, length, path)
    if not raw or raw[-1] != 0:
        raise CTranslate2FormatError(
            f"{path}: string at byte {handle.tell() - length} is not NUL-terminated; not a CTranslate2 model.bin."
        )
    return raw[:-1].decode("utf-8")


def read_ct2_index(model_bin: str | os.PathLike) -> CT2ModelIndex:
    """Parse the header of a CTranslate2 ``model.bin`` without loading variable data."""
    path = Path(model_bin)
    if not path.is_file():
        raise CTranslate2FormatError(
            f"CTranslate2 model file {path} does not exist; expected a folder with model.bin "
            "(as written by ct2-transformers-converter)."
        )
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        version = _read_uint(handle, "I", path)
        if version != CT2_BINARY_VERSION:
            raise CTranslate2FormatError(
                f"{path} has CTranslate2 binary version {version}; expected {CT2_BINARY_VERSION}. "
                "Re-convert the model with ctranslate2>=3 (ct2-transformers-converter --quantization float16)."
            )
        spec_name = _read_string(handle, path)
        revision = _read_uint(handle, "I", path)
        n_vars = _read_uint(handle, "I", path)
        variables = []
        for _ in range(n_vars):
            name = _read_string(handle, path)
            rank = _read_uint(handle, "B", path)
            shape = tuple(_read_uint(handle, "I", path) for _ in range(rank))
            dtype_id = _read_uint(handle, "B", path)
            n_bytes = _read_uint(handle, "I", path)
            if dtype_id not in _DTYPES:
                raise CTranslate2FormatError(
                    f"{path}: variable {name!r} has unknown dtype id {dtype_id}; expected one of {sorted(_DTYPES)}."
                )
            dtype = _DTYPES[dtype_id]
            expected = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            if n_bytes != expected:
                raise CTranslate2FormatError(
                    f"{path}: variable {name!r} of shape {shape} and dtype {dtype} has {n_bytes} bytes; "
                    f"expected {expected}. The file is corrupt."
                )
            offset = handle.tell()
            if offset + n_bytes > file_size:
                raise CTranslate2FormatError(
                    f"{path}: variable {name!r} needs bytes {offset}..{offset + n_bytes} but the file has "
                    f"{file_size}; the file is truncated."
                )
            handle.seek(n_bytes, os.SEEK_CUR)
            variables.append(CT2Variable(name, shape, str(dtype).removeprefix("torch."), offset, n_bytes))
        n_aliases = _read_uint(handle, "I", path)
        aliases = tuple((_read_string(handle, path), _read_string(handle, path)) for _ in range(n_aliases))
    return CT2ModelIndex(
        path=str(path), binary_version=version, spec_name=spec_name, spec_revision=revision,
        variables=tuple(variables), aliases=aliases,
    )


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def read_ct2_tensor(index: CT2ModelIndex, name: str, *, handle: BinaryIO | None = None) -> torch.Tensor:
    """One variable as a tensor of its stored dtype (float16 stays float16)."""
    var = index.variable(name)
    if handle is None:
        with open(index.path, "rb") as own:
            return read_ct2_tensor(index, name, handle=own)
    handle.seek(var.offset)
    data = bytearray(_read_exact(handle, var.n_bytes, Path(index.path)))
    dtype = getattr(torch, var.dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(var.shape) if var.n_bytes else torch.empty(var.shape, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Whisper encoder mapping


def whisper_encoder_dims(index: CT2ModelIndex) -> WhisperEncoderDims:
    """Read the encoder sizes from the variable shapes of a Whisper model.bin."""
    if index.spec_name != "WhisperSpec":
        raise CTranslate2FormatError(
            f"{index.path} holds a {index.spec_name!r} model; expected 'WhisperSpec'. "
            "Pass a CTranslate2 Whisper model folder (converted from openai/whisper-*)."
        )
    n_layers = 0
    names = {var.name for var in index.variables} | {alias for alias, _ in index.aliases}
    while f"encoder/layer_{n_layers}/self_attention/linear_0/weight" in names:
        n_layers += 1
    conv1 = index.variable("encoder/conv1/weight").shape  # (d_model, n_mels, 3)
    fc1 = index.variable("encoder/layer_0/ffn/linear_0/weight").shape  # (ffn, d_model)
    positions = index.variable("encoder/position_encodings/encodings").shape  # (1500, d_model)
    with open(index.path, "rb") as handle:
        n_heads = int(read_ct2_tensor(index, "encoder/num_heads", handle=handle).item())
    return WhisperEncoderDims(
        n_mels=conv1[1], d_model=conv1[0], n_layers=n_layers, n_heads=n_heads,
        ffn_size=fc1[0], max_positions=positions[0],
    )


def convert_ct2_whisper_encoder(model_bin: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WhisperEncoderDims, str, float]:
    """Map the encoder of a CTranslate2 Whisper model.bin to a ``WhisperEncoder`` state dict.

    Returns:
        (state dict of float32 tensors keyed like ``WhisperEncoder.state_dict()``,
        encoder sizes, source dtype name, max |key bias| that was dropped).
    """
    index = read_ct2_index(model_bin)
    dims = whisper_encoder_dims(index)
    state: dict[str, torch.Tensor] = {}
    source_dtypes: set[str] = set()
    key_bias_max = 0.0
    with open(index.path, "rb") as handle:

        def get(name: str) -> torch.Tensor:
            var = index.variable(name)
            tensor = read_ct2_tensor(index, name, handle=handle)
            if tensor.dtype not in _FLOAT_DTYPES:
                raise CTranslate2FormatError(
                    f"{index.path}: {var.name} is stored as {var.dtype} (quantized); expected float32, float16 "
                    "or bfloat16. Re-convert with ct2-transformers-converter --quantization float16."
                )
            source_dtypes.add(var.dtype)
            return tensor.to(torch.float32)

        for conv in ("conv1", "conv2"):
            state[f"{conv}.weight"] = get(f"encoder/{conv}/weight")
            state[f"{conv}.bias"] = get(f"encoder/{conv}/bias")
        state["embed_positions.weight"] = get("encoder/position_encodings/encodings")
        d = dims.d_model
        for i in range(dims.n_layers):
            src = f"encoder/layer_{i}"
            dst = f"layers.{i}"
            qkv_w = get(f"{src}/self_attention/linear_0/weight")
            qkv_b = get(f"{src}/self_attention/linear_0/bias")
            if qkv_w.shape != (3 * d, d) or qkv_b.shape != (3 * d,):
                raise CTranslate2FormatError(
                    f"{index.path}: fused QKV of layer {i} has shapes {tuple(qkv_w.shape)}, {tuple(qkv_b.shape)}; "
                    f"expected ({3 * d}, {d}) and ({3 * d},)."
                )
            # Slices, then clone: each tensor must own its storage for safetensors.
            state[f"{dst}.self_attn.q_proj.weight"] = qkv_w[:d].clone()
            state[f"{dst}.self_attn.k_proj.weight"] = qkv_w[d : 2 * d].clone()
            state[f"{dst}.self_attn.v_proj.weight"] = qkv_w[2 * d :].clone()
            state[f"{dst}.self_attn.q_proj.bias"] = qkv_b[:d].clone()
            state[f"{dst}.self_attn.v_proj.bias"] = qkv_b[2 * d :].clone()
            key_bias_max = max(key_bias_max, float(qkv_b[d : 2 * d].abs().max()))
            state[f"{dst}.self_attn.out_proj.weight"] = get(f"{src}/self_attention/linear_1/weight")
            state[f"{dst}.self_attn.out_proj.bias"] = get(f"{src}/self_attention/linear_1/bias")
            state[f"{dst}.self_attn_layer_norm.weight"] = get(f"{src}/self_attention/layer_norm/gamma")
            state[f"{dst}.self_attn_layer_norm.bias"] = get(f"{src}/self_attention/layer_norm/beta")
            state[f"{dst}.final_layer_norm.weight"] = get(f"{src}/ffn/layer_norm/gamma")
            state[f"{dst}.final_layer_norm.bias"] = get(f"{src}/ffn/layer_norm/beta")
            state[f"{dst}.fc1.weight"] = get(f"{src}/ffn/linear_0/weight")
            state[f"{dst}.fc1.bias"] = get(f"{src}/ffn/linear_0/bias")
            state[f"{dst}.fc2.weight"] = get(f"{src}/ffn/linear_1/weight")
            state[f"{dst}.fc2.bias"] = get(f"{src}/ffn/linear_1/bias")
        state["layer_norm.weight"] = get("encoder/layer_norm/gamma")
        state["layer_norm.bias"] = get("encoder/layer_norm/beta")
    return state, dims, ",".join(sorted(source_dtypes)), key_bias_max


def whisper_config_for_dims(dims: WhisperEncoderDims):
    """A transformers ``WhisperConfig`` whose encoder has these sizes (decoder irrelevant)."""
    from transformers import WhisperConfig

    return WhisperConfig(
        d_model=dims.d_model, encoder_layers=dims.n_layers, encoder_attention_heads=dims.n_heads,
        encoder_ffn_dim=dims.ffn_size, num_mel_bins=dims.n_mels, max_source_positions=dims.max_positions,
    )


def _default_cache_root() -> Path:
    return Path(os.environ.get("EDGE_SER_CACHE") or Path.home() / ".cache" / "edge-ser")


def _writable_dir(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def _in_edge_ser_cache(folder: Path) -> bool:
    try:
        return folder.resolve().is_relative_to(_default_cache_root().resolve())
    except OSError:
        return False


def cache_path_for(model_bin: Path, sha256: str) -> Path:
    """Where the converted weights of `model_bin` (whose sha256 is `sha256`) are cached.

    Next to it when its folder is in the edge-ser cache and writable (the whisper-base extra's
    joined folder), else ``<edge-ser cache>/ct2-whisper/<sha256[:16]>/``: never in a folder that
    is not edge-ser's (a user's weights folder, a read-only install).
    """
    if _in_edge_ser_cache(model_bin.parent) and _writable_dir(model_bin.parent):
        return model_bin.parent / CACHE_FILE_NAME
    return _default_cache_root() / "ct2-whisper" / sha256[:16] / CACHE_FILE_NAME


def _read_valid_cache(cache_file: Path, sha256: str) -> dict[str, str] | None:
    """The metadata of `cache_file` when it was converted from a model.bin with `sha256` and its bytes
    still have the sha256 recorded next to it; else None (a miss: convert again and rewrite it)."""
    digest_file = cache_file.with_name(cache_file.name + CACHE_DIGEST_SUFFIX)
    if not cache_file.is_file() or not digest_file.is_file():
        return None
    from safetensors import safe_open

    try:
        recorded = digest_file.read_text(encoding="ascii").strip()
        with safe_open(str(cache_file), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # a half-written or foreign file is simply not a cache hit
        return None
    if (meta.get("format") != _CACHE_FORMAT or meta.get("format_version") != _CACHE_FORMAT_VERSION
            or meta.get("source_sha256") != sha256):
        return None
    actual = sha256_file(cache_file)
    if actual != recorded:
        logger.warning("%s has sha256 %s..., %s records %s...: the cached weights were modified; converting %s "
                       "again", cache_file, actual[:12], digest_file.name, recorded[:12], cache_file.parent)
        return None
    return meta


def load_ct2_whisper_encoder(ct2_dir: str | os.PathLike, *, use_cache: bool = True):
    """Build a transformers ``WhisperEncoder`` (eval mode) from a CTranslate2 Whisper folder.

    Args:
        ct2_dir: folder with ``model.bin`` (or the ``model.bin`` path itself).
        use_cache: read/write the converted ``encoder.safetensors`` cache.

    Returns:
        (encoder, :class:`CT2ConversionInfo`). The encoder holds float32 weights
        up-cast from the stored float16.
    """
    from safetensors.torch import load_file, save_file
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    start = time.perf_counter()
    ct2_path = Path(ct2_dir)
    model_bin = ct2_path if ct2_path.name == "model.bin" else ct2_path / "model.bin"
    if not model_bin.is_file():
        raise CTranslate2FormatError(
            f"{ct2_path} has no model.bin; expected a CTranslate2 Whisper model folder "
            "(pip install 'edge-ser[whisper-base]' provides one, or convert with ct2-transformers-converter)."
        )
    # model.bin is hashed on every load: the cache is keyed by its content, not by its path and mtime.
    sha256 = sha256_file(model_bin)
    cache_file = cache_path_for(model_bin, sha256)
    meta = _read_valid_cache(cache_file, sha256) if use_cache else None
    hit = meta is not None
    if meta is not None:
        state = load_file(str(cache_file))
        dims = WhisperEncoderDims(**{f.name: int(meta[f"dims.{f.name}"]) for f in dataclasses.fields(WhisperEncoderDims)})
        source_dtype, key_bias = meta["source_dtype"], float(meta["key_bias_max_abs"])
        cache_path: Path | None = cache_file
    else:
        state, dims, source_dtype, key_bias = convert_ct2_whisper_encoder(model_bin)
        cache_path = None
        if use_cache:
            cache_path = cache_file
            stat = model_bin.stat()
            meta = {
                "format": _CACHE_FORMAT, "format_version": _CACHE_FORMAT_VERSION,
                "source_path": str(model_bin.resolve()), "source_size": str(stat.st_size),
                "source_mtime_ns": str(stat.st_mtime_ns), "source_sha256": sha256,
                "source_dtype": source_dtype, "key_bias_max_abs": repr(key_bias),
            }
            meta.update({f"dims.{f.name}": str(getattr(dims, f.name)) for f in dataclasses.fields(dims)})
            try:
                with atomic_path(cache_path, suffix=".safetensors") as tmp:
                    save_file(state, str(tmp), metadata=meta)
                    digest = sha256_file(tmp)
                # The digest is written after the file: a crash between the two leaves a miss, never a false hit.
                with atomic_path(cache_path.with_name(cache_path.name + CACHE_DIGEST_SUFFIX)) as tmp:
                    tmp.write_text(digest + "\n", encoding="ascii")
            except OSError:
                cache_path = None  # a read-only cache only costs speed next time
    config = whisper_config_for_dims(dims)
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    encoder = encoder.to_empty(device="cpu")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CTranslate2FormatError(
            f"converted Whisper encoder from {model_bin} does not fit transformers' WhisperEncoder: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}. This is a bug in edge_ser.fm.ctranslate2_whisper."
        )
    encoder.eval()
    info = CT2ConversionInfo(
        model_bin=str(model_bin), sha256=sha256, source_dtype=source_dtype, dims=dims,
        cache_path=str(cache_path) if cache_path else None, from_cache=hit,
        load_seconds=time.perf_counter() - start, key_bias_max_abs=key_bias,
    )
    return encoder, info
