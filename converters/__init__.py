"""edge_ser.converters: truncate -> fuse -> quantize -> lower -> validate -> save.

Installed as ``edge_ser.converters`` (the folder ``converters/`` is mapped in pyproject).
"""
