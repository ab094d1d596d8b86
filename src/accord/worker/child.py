"""The main function of a node's slot process."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgspec

from accord.store.records import ClaimedTask

if TYPE_CHECKING:
    from accord.tasks.registry import Runtime

PR_SET_PDEATHSIG = 1


def child_main(locator: str, store_url: str, conn: Connection, node_id: int) -> None:
    """Load the app, then run the tasks the node sends until told to stop.

    Interrupts go to the node, which decides how to stop; the slot ignores them.
    """
    # A node may block its stop signals (it takes them with sigwait) and a
    # slot may inherit the mask: ignore SIGINT first, then unblock, so that a
    # pending Ctrl-C is dropped. SIGTERM ends a slot, Ctrl-C does not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    _die_with_parent()
    encode = msgspec.msgpack.Encoder().encode
    try:
        from accord.tasks.registry import find

        _, runtime = find(locator)
        if not runtime.store_opened:
            runtime.use_store(store_url)
    except BaseException as exc:  # report why, then exit: the node stops starting slots
        from accord._checks import MAX_ERROR_CHARS, clean_text, describe_exception

        why = clean_text(f"cannot load app {locator}: {describe_exception(exc)}", MAX_ERROR_CHARS)
        conn.send_bytes(encode(["fatal", why]))
        raise SystemExit(3) from None
    from accord.worker.capture import prepare_slot_process

    prepare_slot_process()  # INFO records reach the capture of the task's logs
    conn.send_bytes(encode(["ready"]))
    decode_task = msgspec.msgpack.Decoder(ClaimedTask).decode
    decode_any = msgspec.msgpack.Decoder().decode
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the node is gone
        if raw[0] == 0x91:
            if decode_any(raw)[0] == "stop":
                return
            continue
        task = decode_task(raw)

        def on_block(flag: bool, task_id: int = task.id) -> None:
            conn.send_bytes(encode(["blocked" if flag else "unblocked", task_id]))

        conn.send_bytes(_outcome(encode, runtime, task, node_id, on_block))


def _outcome(
    encode: Callable[[Any], bytes],
    runtime: Runtime,
    task: ClaimedTask,
    node_id: int,
    on_block: Callable[[bool], None],
) -> bytes:
    """The attempt's completion, encoded. Nothing the task does may end this
    process (the node would report a crash, not what happened): an outcome
    that cannot be produced or encoded is sent as a failed attempt saying why."""
    from accord._checks import describe_exception, type_name
    from accord.worker.execute import error_completion, execute

    try:
        return encode(execute(runtime, task, node_id=node_id, on_block=on_block))
    except Exception as exc:
        why = f"the attempt's outcome could not be sent to the node: {describe_exception(exc)}"
        return encode(error_completion(task, why, type_name(exc)))


def _die_with_parent() -> None:
    """Ask the kernel to kill this slot when its node dies (Linux).

    A node killed with SIGKILL cannot stop its slots; without this a slot
    would finish its task (side effects included) for an attempt the store
    will refuse anyway.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the node died before the request took effect
        os._exit(1)
