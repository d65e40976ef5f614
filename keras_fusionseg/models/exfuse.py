"""GCN and ExFuse models (to be implemented)."""
