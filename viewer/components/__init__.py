"""Viewer components: each takes the ViewerState."""
