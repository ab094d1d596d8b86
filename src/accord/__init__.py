"""accord: a runtime for distributed AI-agent workflows.

Define an :class:`App`, register tasks and workflows on it, submit them, and
run nodes (``accord worker``) that execute them; the store (SQLite on one
machine) keeps every durable fact.
"""

from __future__ import annotations

from accord.app import App
from accord.context import TaskContext, current
from accord.errors import (
    AccordError,
    ConfigError,
    ConflictError,
    FencedError,
    NotFoundError,
    Retry,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreURLError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    WorkerShutdown,
)
from accord.handles import Handle, Run
from accord.store.base import TaskState
from accord.tasks import Task
from accord.worker.node import Node

__version__ = "0.1.0"

__all__ = [
    "AccordError",
    "App",
    "ConfigError",
    "ConflictError",
    "FencedError",
    "Handle",
    "Node",
    "NotFoundError",
    "Retry",
    "Run",
    "SchemaError",
    "StorageFullError",
    "StoreError",
    "StoreURLError",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskFailed",
    "TaskState",
    "WorkerShutdown",
    "__version__",
    "current",
]
