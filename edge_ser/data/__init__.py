"""edge_ser.data."""
