"""Redirect rules: the pure model (``model``), the builder and the renderers."""

from .model import NftChain, NftTable, PolicyRoute, Rule, RuleSet, Table

__all__ = ["NftChain", "NftTable", "PolicyRoute", "Rule", "RuleSet", "Table"]
