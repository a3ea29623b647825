"""quantgraph.passes"""
