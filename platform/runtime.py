"""Ray start-up shared by the jobs: join a cluster or start a local one, once."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any


def plain_logs() -> None:
    """No terminal control codes in logs that are not a terminal (files, CI, ``ray job logs``):
    Ray Data's progress bars (carriage returns and ANSI cursor moves) and the colour of Ray's
    ``(pid=...)`` prefixes are turned off unless stdout is a TTY; an explicit setting of
    ``RAY_DATA_DISABLE_PROGRESS_BARS`` / ``RAY_COLOR_PREFIX`` wins."""
    if sys.stdout.isatty():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    import ray  # noqa: F401  (sets up the "ray" logger's handler)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray").handlers:  # e.g. "View the dashboard at <bold green>"
        if not any(isinstance(f, _StripAnsi) for f in handler.filters):
            handler.addFilter(_StripAnsi())


class _StripAnsi(logging.Filter):
    """Removes ANSI escape sequences from a log record's message."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "\x1b[" in msg:
            record.msg, record.args = self._ANSI.sub("", msg), ()
        return True


def init_ray(address: str | None = None, num_cpus: int | None = None, log=print, **kwargs: Any) -> None:
    """``ray.init`` unless Ray is already up in this process.

    ``address`` (the jobs' ``ray.address``): ``None`` joins ``RAY_ADDRESS`` when set (``ray
    job submit`` sets it for the jobs it runs) and otherwise starts a new local Ray of this
    process, also when a ``ray start`` head runs on this machine (Ray would otherwise join
    that head and refuse ``num_cpus``); ``"auto"`` (or ``host:port``) joins the running
    cluster, which owns its resources, so none are passed.  The logical ``num_cpus`` of a
    local Ray defaults to ``max(4, cores)``: on a 2-core machine a Ray Data pipeline and a
    2-worker trainer otherwise wait on each other for CPUs forever (docs/training.md).
    """
    plain_logs()
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if address is None:
        address = os.environ.get("RAY_ADDRESS")
    if address:
        log(f"ray: joining the running cluster at {address} (its resources, not ray.num_cpus)")
        ray.init(address=address, **kwargs)
        return
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    # the dashboard process serves Ray's state API, which Ray Train's placement-group cleaner
    # polls every few seconds: without it the run's log fills with "Failed to query Ray Train
    # Controller actor state" warnings
    kwargs.setdefault("include_dashboard", True)
    ray.init(address="local", num_cpus=num_cpus, **kwargs)
