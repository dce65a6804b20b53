"""edge_ser.runtime: load an artifact, validate inputs against its manifest, run it.

Installed as ``edge_ser.runtime``. Imports nothing from training.
"""
