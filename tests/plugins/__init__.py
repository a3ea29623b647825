"""Plug-ins defined outside ``quantgraph/``, registered through the public registry APIs."""
