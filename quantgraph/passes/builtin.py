"""Import the built-in passes so they register themselves."""

from quantgraph.passes import annotate, calibrate, canonicalize, insert_qdq, tag_roles  # noqa: F401
