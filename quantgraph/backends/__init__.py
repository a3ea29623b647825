"""quantgraph.backends"""
