"""Modified aligned Xception backbones (to be implemented)."""
