"""Policies: named pipelines of passes."""

from quantgraph.policies.base import Policy, available_policies, get_policy, register_policy

__all__ = ["Policy", "available_policies", "get_policy", "register_policy"]
