"""Dilated ResNet backbones (to be implemented)."""
