"""keras_fusionseg.training (to be implemented)."""
