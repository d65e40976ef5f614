"""PSPNet and GFFNet models (to be implemented)."""
