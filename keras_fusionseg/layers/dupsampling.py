"""DUpsampling blocks (to be implemented)."""
