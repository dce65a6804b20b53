"""edge_ser.features."""
