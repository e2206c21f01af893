"""Which serial port is the arm's: the ports this machine has, and the one that goes away when the owner
unplugs the arm's USB adapter (``edge-setup find-port``, as LeRobot's ``find_port``).

``list_ports()`` reads ``serial.tools.list_ports``; ``find_removed(list_ports, before, ...)`` lists the
ports again until one has gone (or a deadline passes). No prompts here: the command asks the owner.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortInfo:
    """One serial port: its device path, pyserial's description and hardware id (USB VID:PID, serial)."""

    device: str
    description: str = ""
    hwid: str = ""

    def to_dict(self) -> dict:
        return {"device": self.device, "description": self.description, "hwid": self.hwid}


def list_ports() -> list[PortInfo]:
    """Every serial port pyserial sees (USB adapters: ``/dev/ttyACM*``, ``/dev/ttyUSB*``; macOS
    ``/dev/tty.usbmodem*``), sorted by device path."""
    from serial.tools import list_ports as lp

    return sorted((PortInfo(p.device, p.description or "", p.hwid or "") for p in lp.comports()),
                  key=lambda p: p.device)


def port_diff(before: list[PortInfo], after: list[PortInfo]) -> tuple[list[PortInfo], list[PortInfo]]:
    """(ports gone, ports new) between two listings, by device path."""
    had, has = {p.device for p in before}, {p.device for p in after}
    return [p for p in before if p.device not in has], [p for p in after if p.device not in had]


def find_removed(lister: Callable[[], list[PortInfo]], before: list[PortInfo], timeout_s: float = 0.0,
                 poll_s: float = 0.2) -> list[PortInfo]:
    """The ports of ``before`` that ``lister()`` no longer shows: listed once, and again every ``poll_s``
    until one has gone or ``timeout_s`` has passed (0: listed once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        gone, _ = port_diff(before, lister())
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(poll_s)


def render_ports(ports: list[PortInfo], console) -> None:
    """The ports as a rich table (or one line when there are none)."""
    from rich.table import Table

    if not ports:
        console.print("no serial ports found")
        return
    t = Table("port", "description", "hardware id", title="serial ports")
    for p in ports:
        t.add_row(p.device, p.description, p.hwid)
    console.print(t)
