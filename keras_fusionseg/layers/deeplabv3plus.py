"""DeepLabv3+ blocks: ASPP and the decoder (to be implemented)."""
