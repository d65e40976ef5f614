"""FastFCN blocks: JointPyramidUpsampling, ContextEncoding (to be implemented)."""
