"""Widgets, one module per region of the screen."""
