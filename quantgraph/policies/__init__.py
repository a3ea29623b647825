"""quantgraph.policies"""
