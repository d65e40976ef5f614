"""keras_fusionseg.export (to be implemented)."""
