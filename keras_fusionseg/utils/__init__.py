"""keras_fusionseg.utils (to be implemented)."""
