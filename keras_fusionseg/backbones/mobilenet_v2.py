"""MobileNetV2 backbone (to be implemented)."""
