"""EncNet and FastFCN models (to be implemented)."""
