"""SIGTERM or SIGINT while training, or its output closed: stop after the next step with a checkpoint
(status stopped)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import torch


class StopRequest:
    """The stop signals' handler while it is entered (``with``), and the ranks' agreement on a stop.

    Every rank must stop after the same step, so the flag is combined across ranks by an asynchronous gloo
    all-reduce issued after step s and read after step s + 1 (no sync in the step). A second SIGINT aborts at
    once. A rank whose output is closed under it (Ctrl-C on pdsh) stops the same way, as SIGPIPE.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.group: Any = None  # a gloo group, set once the process group exists: the flag stays on the host
        self.signum = 0
        self._previous: dict[int, Any] = {}
        self._flag: torch.Tensor | None = None
        self._pending: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = (_ClosedOutputGuard(s, self._output_closed) for s in self._streams)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        sys.stdout, sys.stderr = self._streams
        # a logger created during the run keeps its stream (a guard, holding this object): the group must not
        # live on through it into interpreter exit (see megadepth.parallel.distributed.shutdown)
        self.group = self._flag = self._pending = None

    def _output_closed(self) -> None:
        if not self.signum:
            self.signum = signal.SIGPIPE

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.signum:
            print(f"megadepth: {signal.Signals(signum).name} received: stopping with a checkpoint after the next "
                  "step" + (" (Ctrl-C again to abort)" if signum == signal.SIGINT else ""), file=sys.stderr)
        self.signum = signum

    def poll(self) -> bool:
        """Whether any rank had been signalled when the previous step ended (the same answer on every rank)."""
        agreed = False
        if self._pending is not None:
            self._pending.wait()
            seen = int(self._flag.item())  # type: ignore[union-attr]
            if seen and not self.signum:
                self.signum = seen  # another rank's signal: name it in the message too
            agreed = bool(seen)
        self._flag = torch.tensor([self.signum], dtype=torch.int64)
        self._pending = torch.distributed.all_reduce(self._flag, op=torch.distributed.ReduceOp.MAX,
                                                     group=self.group, async_op=True)
        return agreed

    def drain(self) -> None:
        """Complete the last all-reduce (every rank issued it) before the loop's collectives end."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


class _ClosedOutputGuard:
    """A text stream that, after a broken pipe, tells ``closed`` and writes to the null device instead."""

    def __init__(self, stream: Any, closed: Any) -> None:
        self._stream = stream
        self._closed = closed

    def _broken(self) -> None:
        """The null device under the stream's descriptor, so later writes and the exit flush succeed."""
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
            self._stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self._closed()

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._broken()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._broken()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
