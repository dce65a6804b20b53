"""edge_ser.evaluation."""
