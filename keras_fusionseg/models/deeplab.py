"""DeepLabv3 and DeepLabv3+ models (to be implemented)."""
