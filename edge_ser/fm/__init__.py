"""edge_ser.fm."""
