"""Routing rules (configuration data) applied to classified series."""
from __future__ import annotations

from dataclasses import dataclass

from spinegate.dicom_io.classify import SeriesClass
from spinegate.service.config import RoutingRule

__all__ = ["RoutingDecision", "route"]


@dataclass(frozen=True)
class RoutingDecision:
    """Which engine a series goes to, by which rule; or why it is skipped."""

    engine: str | None
    rule: str | None
    skipped_reason: str = ""


def route(cls: SeriesClass, rules: tuple[RoutingRule, ...]) -> RoutingDecision:
    """First rule whose planes and weightings match wins."""
    if cls.excluded:
        return RoutingDecision(None, None, cls.excluded)
    for rule in rules:
        if rule.planes and cls.plane not in rule.planes:
            continue
        if rule.weightings and cls.weighting not in rule.weightings:
            continue
        return RoutingDecision(rule.engine.value, rule.name)
    return RoutingDecision(None, None, f"no_rule_for_{cls.plane.value}_{cls.weighting.value}")
