"""How a serving process runs its event loop, and how it leaves at once (shared by `run` and its workers).

Only the standard library (uvloop when asked for): a worker process imports this and must stay small.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run `main` to completion on a new loop of the chosen kind ("uvloop" or "asyncio")."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def exit_now(code: int) -> None:
    """Leave the process at once (no drain, no clean-up), with what the log handlers and stdout hold written."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(code)
