"""DUpsampling model (to be implemented)."""
