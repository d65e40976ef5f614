"""keras_fusionseg.evaluation (to be implemented)."""
