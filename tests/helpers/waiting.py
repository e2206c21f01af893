"""Polling against a deadline, for state that another thread or process reaches in its own time."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.005) -> T:
    """Call ``predicate`` until it returns something truthy and return that; fail the test if it has not
    within ``timeout_s`` seconds, naming ``what`` did not happen.

    The last call is made at or after the deadline, so a descheduled test never fails a condition that
    holds by then; exceptions from the predicate propagate.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
