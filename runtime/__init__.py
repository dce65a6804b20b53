"""edge_ser.runtime: load an artifact, validate inputs against its manifest, run it.

Installed as ``edge_ser.runtime`` (folder ``runtime/``). Imports nothing from
training: an app prototype needs only this package, the audio helpers and the
backend's runtime (executorch, onnxruntime or coremltools on macOS).
"""

from edge_ser.runtime.artifact import ArtifactError, ArtifactManifest, read_manifest
from edge_ser.runtime.targets import BackendUnavailableError, get_runner
from edge_ser.runtime.model import EmotionModel, Prediction, TimelinePoint, load
from edge_ser.runtime.stream import EmotionStream

__all__ = [
    "ArtifactError", "ArtifactManifest", "BackendUnavailableError", "EmotionModel", "EmotionStream", "Prediction",
    "TimelinePoint",
    "get_runner", "load", "read_manifest",
]
