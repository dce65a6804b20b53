"""The evaluation metrics under their earlier import path.

The metrics live in :mod:`edge_ser.metrics`, the lowest layer, because training and the
runtime's parity check use them too (docs/architecture.md); ``edge_ser.evaluation.metrics``
keeps working for code written against it.
"""

from edge_ser.metrics import *  # noqa: F401,F403
from edge_ser.metrics import __all__  # noqa: F401
