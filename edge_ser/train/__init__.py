"""edge_ser.train."""
