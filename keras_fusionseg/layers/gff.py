"""GFF paper blocks: PyramidPooling, GatedFullyFusion, DenseFeaturePyramid (to be implemented)."""
