"""Every profile records the Jetson power mode and clocks (an empty record off a Jetson), and says it."""

from __future__ import annotations

from edgebridge.runtime import power
from edgebridge.runtime.profiling import Profiler

ORIN = {"l4t": "36.4.0", "jetpack": "6.1", "model": "NVIDIA Jetson AGX Orin", "nvpmodel": {"id": 0, "name": "MAXN"},
        "jetson_clocks": True, "cpu": {}, "gpu": {"cur_hz": 1_300_500_000}, "emc": {}}


def test_the_profile_records_the_power_mode(monkeypatch, capsys):
    monkeypatch.setattr(power, "read_power_mode", lambda: ORIN)
    prof = Profiler()
    data = prof.report(None)
    assert data["system"]["power"] == ORIN
    out = " ".join(capsys.readouterr().out.split())  # the caption wraps
    assert "Power: MAXN (mode 0), jetson_clocks on, GPU 1300 MHz." in out


def test_off_a_jetson_the_record_is_empty():
    assert Profiler().system()["power"] == {}
