"""Feetech protocol over a real pseudo-terminal: packets, transactions, fault injection."""

import pytest

from edgebridge.config import ConfigError
from edgebridge.drivers.feetech_tables import INST_SYNC_WRITE, SCS0009, STS3215
from edgebridge.drivers.feetech_protocol import checksum, instruction_packet
from edgebridge.drivers.servo_bus import ServoBus, ServoBusConfig
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError
from feetech_bus_emulator import FeetechBusEmulator
from helpers.waiting import wait_until


@pytest.fixture
def emu():
    with FeetechBusEmulator() as e:
        yield e


@pytest.fixture
def bus(emu):
    with ServoBus(ServoBusConfig(emu.port, timeout_s=0.25, retries=0)) as b:
        yield b


def test_packet_framing_known_bytes():
    # PING servo 1: FF FF 01 02 01 FB (checksum = ~(1 + 2 + 1)).
    assert instruction_packet(1, 0x01) == bytes([0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB])
    # READ servo 1, Present_Position (56, 2 bytes).
    pkt = instruction_packet(1, 0x02, bytes([56, 2]))
    assert pkt[:5] == bytes([0xFF, 0xFF, 1, 4, 2]) and pkt[-1] == checksum(pkt[2:-1])
    with pytest.raises(ValueError):
        instruction_packet(300, 0x01)


def test_value_encoding_inverse_pairs():
    for v in (0, 1, 2048, 4095, 65535):
        assert STS3215.decode("Goal_Position", STS3215.encode("Goal_Position", v)) == v
    assert STS3215.encode("Goal_Position", 0x0102) == b"\x02\x01"  # STS: little-endian
    assert SCS0009.encode("Goal_Position", 0x0102) == b"\x01\x02"  # SCS: big-endian
    for v in (-2047, -1, 0, 5, 2047):  # Homing_Offset: sign-magnitude, sign at bit 11
        assert STS3215.decode("Homing_Offset", STS3215.encode("Homing_Offset", v)) == v
    assert STS3215.encode("Homing_Offset", -5) == (5 | 1 << 11).to_bytes(2, "little")
    with pytest.raises(ValueError):
        STS3215.encode("Homing_Offset", 4000)
    with pytest.raises(ValueError):
        STS3215.encode("Torque_Enable", 256)


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match="timeout_s"):
        ServoBusConfig("/dev/null", timeout_s=0)
    with pytest.raises(ConfigError, match="model"):
        ServoBusConfig("/dev/null", model="xl330")


def test_not_open_and_bad_port():
    bus = ServoBus(ServoBusConfig("/dev/does-not-exist-edgebridge"))
    with pytest.raises(DeviceNotConnectedError):
        bus.read(1, "Present_Position")
    with pytest.raises(DeviceFaultError, match="does-not-exist-edgebridge"):
        bus.open()


def test_ping_read_write(emu, bus):
    assert bus.ping(1) and bus.ping(6)
    assert not bus.ping(9)
    assert bus.read(3, "Model_Number") == 777
    bus.write(2, "Goal_Position", 1234)
    assert emu.get(2, "Goal_Position") == 1234
    assert bus.read(2, "Goal_Position") == 1234
    with pytest.raises(ValueError, match="read-only"):
        bus.write(2, "Present_Position", 5)
    with pytest.raises(KeyError, match="No_Such"):
        bus.read(2, "No_Such")


def test_sync_read_write_and_motion(emu, bus):
    ids = range(1, 7)
    assert bus.sync_read("Present_Position", ids) == {i: 2048 for i in ids}
    goals = {i: 1000 + 100 * i for i in ids}
    packet = bus.sync_write("Goal_Position", goals)
    assert packet[2] == 0xFE and packet[4] == INST_SYNC_WRITE
    bus.sync_write("Torque_Enable", {i: 1 for i in ids})
    wait_until(lambda: bus.sync_read("Present_Position", ids) == goals, 2.0, "every servo to reach its goal")
    assert bus.sync_read("Present_Position", ids) == goals


@pytest.mark.parametrize("fault,kind", [("corrupt", "checksum"), ("silent", "timeout"), ("wrong_id", "wrong_id")])
def test_fault_injection_names_port_id_register(emu, bus, fault, kind):
    if fault == "wrong_id":
        emu.wrong_id[4] = 5
    else:
        getattr(emu, fault).add(4)
    with pytest.raises(DeviceFaultError) as ei:
        bus.read(4, "Present_Position")
    msg = str(ei.value)
    assert emu.port in msg and "servo 4" in msg and "Present_Position" in msg
    assert bus.stats.faults[kind] == 1
    with pytest.raises(DeviceFaultError, match="Present_Position"):
        bus.sync_read("Present_Position", [1, 4, 6])
    # Other servos still work once the faulty one is left out.
    assert bus.sync_read("Present_Position", [1, 6]) == {1: 2048, 6: 2048}


def test_servo_error_bits_are_reported(emu, bus):
    emu.error_bits[2] = 0x20 | 0x04
    with pytest.raises(DeviceFaultError, match="overheating, overload"):
        bus.read(2, "Present_Position")
    assert bus.stats.faults["servo_error"] == 1


def test_retry_recovers_from_one_corrupt_answer(emu):
    with ServoBus(ServoBusConfig(emu.port, retries=2)) as bus:
        emu.corrupt.add(1)
        orig = emu._reply

        def once(sid, params, t_ready):
            orig(sid, params, t_ready)
            emu.corrupt.discard(sid)

        emu._reply = once
        assert bus.read(1, "Present_Position") == 2048
        assert bus.stats.faults["checksum"] == 1


def test_against_vendor_sdk(emu, bus):
    """Cross-check with Feetech's own SDK (scservo_sdk) on the same emulated bus, both directions."""
    scs = pytest.importorskip("scservo_sdk", reason="feetech-servo-sdk not installed (optional cross-check)")
    bus.write(3, "Goal_Position", 3000)
    port = scs.PortHandler(emu.port)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        ph = scs.PacketHandler(0)
        value, res, err = ph.read2ByteTxRx(port, 3, 42)
        assert (value, res, err) == (3000, scs.COMM_SUCCESS, 0)
        n_before = len(emu.received)
        res, err = ph.write2ByteTxRx(port, 5, 42, 1500)
        assert res == scs.COMM_SUCCESS
        assert bus.read(5, "Goal_Position") == 1500
        vendor_pkt = emu.received[n_before]
        emu.received.clear()
        bus.write(5, "Goal_Position", 1500)
        assert emu.received[0] == vendor_pkt  # byte-identical instruction
    finally:
        port.closePort()


# ---------------------------------------------------------------------------------------------- defects


def test_a_late_answer_is_never_taken_for_the_next_one(emu):
    """Servo 2 answers a READ of Present_Position after the client gave up; the next READ (of Goal_Position,
    same length, same servo) must not return that late Present_Position."""
    emu.set(2, "Goal_Position", 1111)
    with ServoBus(ServoBusConfig(emu.port, timeout_s=0.05, retries=0)) as bus:
        emu.late[2] = 0.08  # after the 50 ms timeout
        with pytest.raises(DeviceFaultError, match="servo 2"):
            bus.read(2, "Present_Position")
        emu.late.clear()
        assert bus.read(2, "Goal_Position") == 1111
        assert bus.read(2, "Present_Position") == 2048
        assert bus.stats.stale >= 1 and bus.stats.resyncs == 1
    # the same inside a sync read: servo 3's late answer is dropped, the values stay with their servos
    emu.set(3, "Goal_Position", 3333)
    with ServoBus(ServoBusConfig(emu.port, timeout_s=0.05, retries=0)) as bus:
        emu.late[3] = 0.08
        with pytest.raises(DeviceFaultError, match="servo 3"):
            bus.sync_read("Present_Position", [1, 3, 5])
        emu.late.clear()
        assert bus.sync_read("Goal_Position", [1, 3, 5]) == {1: 2048, 3: 3333, 5: 2048}


def test_late_answers_with_retries_still_give_the_right_value(emu):
    emu.set(4, "Goal_Position", 777)
    with ServoBus(ServoBusConfig(emu.port, timeout_s=0.05, retries=3)) as bus:
        emu.late[4], emu.late_count[4] = 0.06, 1  # one late answer
        assert bus.read(4, "Present_Position") == 2048  # a retry gets it
        assert bus.read(4, "Goal_Position") == 777
        emu.late[4] = 0.06  # every answer late: every attempt fails, and no value comes back
        with pytest.raises(DeviceFaultError, match="servo 4"):
            bus.read(4, "Present_Position")
        emu.late.clear()
        assert bus.read(4, "Goal_Position") == 777 and bus.read(4, "Present_Position") == 2048


@pytest.mark.parametrize("fault,cause,not_cause", [
    ("silent", "silent: check its power supply", "share"),
    ("corrupt", "garbled: two servos may share id 4", "silent"),
])
def test_sync_read_fault_names_the_servo_and_the_likely_cause(emu, bus, fault, cause, not_cause):
    getattr(emu, fault).add(4)
    with pytest.raises(DeviceFaultError) as ei:
        bus.sync_read("Present_Position", [1, 2, 4, 6])
    msg = str(ei.value)
    assert "servo 4" in msg and cause in msg and not_cause not in msg and "\n" not in msg
    assert ei.value.servo_id == 4


def test_short_and_out_of_range_answers_are_malformed_not_silent(emu, bus):
    emu.short_answer.add(5)
    for call in (lambda: bus.read(5, "Present_Position"), lambda: bus.sync_read("Present_Position", [1, 5])):
        with pytest.raises(DeviceFaultError, match=r"servo 5.*1 data byte\(s\) where 2 were asked.*model") as ei:
            call()
        assert ei.value.kind == "malformed" and "silent" not in str(ei.value)
    emu.short_answer.clear()
    emu.set_raw(1, "Present_Position", (5000).to_bytes(2, "little"))
    with pytest.raises(DeviceFaultError, match=r"servo 1.*Present_Position = 5000 lies outside"):
        bus.read(1, "Present_Position")
    emu.set(1, "Present_Position", 100)
    assert bus.sync_read("Present_Position", [1, 5]) == {1: 100, 5: 2048}
    assert bus.stats.faults["timeout"] == 0 and bus.stats.faults["malformed"] == 3


def test_random_late_answers_never_give_a_wrong_value(emu):
    """Reads of two registers of equal size with distinct values while servos answer late at random: every
    read returns its own register's value or raises; none returns the other's."""
    import random

    rng = random.Random(7)
    ids = (1, 2, 3)
    goals = {i: 1000 + i for i in ids}
    for i in ids:
        emu.set(i, "Goal_Position", goals[i])
    truth = {"Goal_Position": goals, "Present_Position": {i: 2048 for i in ids}}
    ok = failed = 0
    with ServoBus(ServoBusConfig(emu.port, timeout_s=0.02, retries=rng.choice([0, 1]))) as bus:
        for _ in range(40):
            emu.late.clear()
            for i in ids:
                if rng.random() < 0.3:
                    emu.late[i] = rng.uniform(0.005, 0.06)
            reg = rng.choice(list(truth))
            try:
                if rng.random() < 0.5:
                    sid = rng.choice(ids)
                    assert bus.read(sid, reg) == truth[reg][sid], (reg, sid)
                else:
                    assert bus.sync_read(reg, ids) == truth[reg], reg
                ok += 1
            except DeviceFaultError:
                failed += 1
    assert ok >= 10 and failed >= 5, (ok, failed)  # both paths were taken
