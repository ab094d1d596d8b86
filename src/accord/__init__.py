"""accord: a runtime for distributed AI-agent workflows.

Define an :class:`App`, register tasks and workflows on it, submit them, and
run nodes (``accord worker``) that execute them; the store (SQLite on one
machine) keeps every durable fact.
"""

from __future__ import annotations

from accord.app import App
from accord.data import ObjectRef, Objects
from accord.errors import (
    AccordError,
    ClosedError,
    CompactedError,
    ConfigError,
    ConflictError,
    CorruptedError,
    CorruptObjectError,
    FencedError,
    LeaseExpiredError,
    NotFoundError,
    ObjectNotFound,
    PayloadTooLargeError,
    Retry,
    SchemaError,
    StorageFullError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    StoreURLError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    UnstorableError,
    WorkerShutdown,
)
from accord.messaging import Mailbox, Message, Subscription, Topic, TopicMessage
from accord.state import Change, Election, Entry, Lease, Lock, State, Txn, TxnResult, Watch
from accord.store.records import TaskState
from accord.tasks import Handle, Run, Task, TaskContext, current
from accord.worker.node import Node

__version__ = "0.1.0"

__all__ = [
    "AccordError",
    "App",
    "Change",
    "ClosedError",
    "CompactedError",
    "ConfigError",
    "ConflictError",
    "CorruptObjectError",
    "CorruptedError",
    "Election",
    "Entry",
    "FencedError",
    "Handle",
    "Lease",
    "LeaseExpiredError",
    "Lock",
    "Mailbox",
    "Message",
    "Node",
    "NotFoundError",
    "ObjectNotFound",
    "ObjectRef",
    "Objects",
    "PayloadTooLargeError",
    "Retry",
    "Run",
    "SchemaError",
    "State",
    "StorageFullError",
    "StoreError",
    "StoreNotFoundError",
    "StoreURLError",
    "StoreUnavailableError",
    "Subscription",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskFailed",
    "TaskState",
    "Topic",
    "TopicMessage",
    "Txn",
    "TxnResult",
    "UnstorableError",
    "Watch",
    "WorkerShutdown",
    "__version__",
    "current",
]

# Public objects show the module users import them from (``accord.App``, not
# ``accord.app.App``) in reprs, tracebacks, docs and pickles.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("accord."):
        _value.__module__ = __name__
del _name, _value
