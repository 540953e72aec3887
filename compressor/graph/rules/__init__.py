"""What the tracer knows about each op: one rule per op kind (`registry.rule`), registered by
the aten ops it covers, in a module per family of ops. Supporting an op is one rule and its
test."""

from . import elementwise, joins, layers, shapes  # noqa: F401  (each registers its rules)
from .registry import RULES, Rule, rule_for, sources

__all__ = ["RULES", "Rule", "rule_for", "sources"]
