"""Nodes: the processes that run tasks."""

from __future__ import annotations

from accord.worker.node import Node

__all__ = ["Node"]
