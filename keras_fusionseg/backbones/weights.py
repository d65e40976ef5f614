"""Backbone weight loading (to be implemented)."""
