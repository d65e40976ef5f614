"""keras_fusionseg.data (to be implemented)."""
