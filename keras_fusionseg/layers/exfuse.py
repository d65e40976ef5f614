"""ExFuse / GCN blocks (to be implemented)."""
