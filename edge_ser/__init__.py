"""edge-ser: speech emotion recognition from research to devices.

Implements the method of Mitra et al. (2025, arXiv 2503.22711): a frozen speech
foundation model cut at a saliency-selected layer, a small multitask TC-GRU head
trained on grader-vote distributions, and conversion of the fused model to
Core ML, ExecuTorch and ONNX.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
