"""One way a backend turns its driver's errors into accord's.

Each backend wraps its driver calls in a context manager made from
:class:`ErrorMap`: an error of the block that is one of ``caught`` is raised
as what ``translate`` makes of it, with the driver's error as its cause.
A class rather than a generator: its ``__exit__`` never swallows an error,
which type checkers can see (a ``return`` inside the block type-checks).
"""

from __future__ import annotations

import abc
from types import TracebackType


class ErrorMap(abc.ABC):
    """``with <subclass>(...):`` raises a caught driver error as accord's."""

    __slots__ = ()

    caught: tuple[type[BaseException], ...]

    @abc.abstractmethod
    def translate(self, exc: BaseException) -> Exception:
        """The accord error that ``exc`` (one of :attr:`caught`) means."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, self.caught):
            raise self.translate(exc) from exc
