"""Scheduling: policies that order ready tasks, and a simulator to compare them."""

from __future__ import annotations

from accord.scheduling.policy import (
    Candidate,
    CostPolicy,
    FifoPolicy,
    NodeSpec,
    Policy,
    PriorityPolicy,
    policy_named,
)

__all__ = [
    "Candidate",
    "CostPolicy",
    "FifoPolicy",
    "NodeSpec",
    "Policy",
    "PriorityPolicy",
    "policy_named",
]
