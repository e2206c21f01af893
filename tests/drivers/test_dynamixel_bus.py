"""Dynamixel protocol 2.0 through the servo bus, over a pseudo-terminal: framing cross-checked against
dynamixel_sdk, transactions, mixed models, faults, setup functions."""

import random

import pytest

from edgebridge.drivers.dynamixel_protocol import Dynamixel2Protocol, crc16, instruction_packet, stuff
from edgebridge.drivers.dynamixel_tables import XL330_M288, XL430_W250
from edgebridge.drivers.servo_bus import ServoBus, ServoBusConfig
from edgebridge.drivers.servo_protocol import model_by_name
from edgebridge.drivers.servo_setup import find_servos, scan, set_id
from edgebridge.errors import DeviceFaultError
from dynamixel_bus_emulator import DynamixelBusEmulator, crc16_bitwise, frame
from feetech_bus_emulator import FeetechBusEmulator
from helpers.waiting import wait_until

KOCH = {1: XL430_W250, 2: XL430_W250}  # the rest XL330-M288


@pytest.fixture
def emu():
    with DynamixelBusEmulator(models=KOCH) as e:
        yield e


def _bus(emu, **kw) -> ServoBus:
    cfg = {"model": "xl330-m288", "protocol": "dynamixel2", "timeout_s": 0.25, "retries": 0, **kw}
    return ServoBus(ServoBusConfig(emu.port, **cfg), models={1: "xl430-w250", 2: "xl430-w250"})


@pytest.fixture
def bus(emu):
    with _bus(emu) as b:
        yield b


def _random_bytes(rng, n):
    return bytes(rng.choice([0xFF, 0xFF, 0xFD, 0x00, rng.randrange(256)]) for _ in range(n))


def test_packets_equal_the_sdk_crc_and_stuffing_included():
    sdk = pytest.importorskip("dynamixel_sdk", reason="dynamixel-sdk (extra 'dynamixel') not installed")
    ph = sdk.PacketHandler(2.0)
    rng = random.Random(0)
    stuffed = 0
    for _ in range(500):
        data = _random_bytes(rng, rng.randrange(1, 40))
        assert crc16(data) == ph.updateCRC(0, list(data), len(data)) == crc16_bitwise(data)
        sid, inst, params = rng.randrange(253), rng.choice([1, 2, 3, 0x82, 0x83]), _random_bytes(rng, rng.randrange(30))
        n = len(params) + 3
        ref = ph.addStuffing([0xFF, 0xFF, 0xFD, 0, sid, n & 0xFF, n >> 8, inst, *params, 0, 0])
        total = (ref[5] | ref[6] << 8) + 7
        crc = ph.updateCRC(0, ref, total - 2)
        ref[total - 2:total] = [crc & 0xFF, crc >> 8]
        mine = instruction_packet(sid, inst, params)
        assert mine == bytes(ref[:total])
        stuffed += len(mine) > len(params) + 10
    assert stuffed > 50  # the stuffing path was exercised
    # The well-known packet from the e-Manual: PING id 1.
    assert instruction_packet(1, 0x01) == bytes.fromhex("FFFFFD0001030001194E")


def test_sdk_txpacket_bytes_for_the_bus_instructions():
    """What the SDK itself writes for READ / SYNC_READ / SYNC_WRITE (none needs stuffing) is what we write."""
    sdk = pytest.importorskip("dynamixel_sdk", reason="dynamixel-sdk (extra 'dynamixel') not installed")
    p = Dynamixel2Protocol()
    with DynamixelBusEmulator() as emu:
        port = sdk.PortHandler(emu.port)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            ph = sdk.PacketHandler(2.0)
            ph.read4ByteTxRx(port, 3, 132)
            sr = sdk.GroupSyncRead(port, ph, 132, 4)
            for i in (1, 2, 3):
                sr.addParam(i)
            sr.txRxPacket()
            sw = sdk.GroupSyncWrite(port, ph, 116, 4)
            for i in (1, 2):
                sw.addParam(i, list((1000 + i).to_bytes(4, "little")))
            sw.txPacket()
            wait_until(lambda: len(emu.received) == 3, 2.0, "the emulator to take three packets")
        finally:
            port.closePort()
    got = [p.instruction(sid, inst, params) for sid, inst, params in emu.received]
    assert got == [p.instruction(3, p.INST_READ, p.read_params(132, 4)),
                   p.instruction(0xFE, p.INST_SYNC_READ, p.sync_read_params(132, 4, [1, 2, 3])),
                   p.instruction(0xFE, p.INST_SYNC_WRITE, p.sync_write_params(
                       116, 4, [(1, (1001).to_bytes(4, "little")), (2, (1002).to_bytes(4, "little"))]))]


def test_parse_takes_stuffed_status_packets_out_of_noise():
    p = Dynamixel2Protocol()
    rng = random.Random(1)
    for _ in range(300):
        params = _random_bytes(rng, rng.randrange(30))
        pkt = frame(7, bytes([0x55, 0]) + params)
        buf = bytearray(b"\xff\x12\xff\xff\xfd" + pkt + pkt[:5])
        st = p.parse(buf)
        assert (st.servo_id, st.error, st.params) == (7, 0, params)
        assert bytes(buf) == pkt[:5]
    corrupt = bytearray(frame(3, b"\x55\x00\x01\x02"))
    corrupt[-1] ^= 0xFF
    assert p.parse(corrupt).why.startswith("bad CRC")
    echo = bytearray(instruction_packet(3, 0x02, p.read_params(132, 4)) + frame(3, b"\x55\x00\x01\x02\x03\x04"))
    assert p.parse(echo).params == b"\x01\x02\x03\x04"  # an echoed instruction is not an answer
    assert stuff(b"\xff\xff\xfd\x00\x01\x06\x00\x03\xff\xff\xfd") == b"\xff\xff\xfd\x00\x01\x07\x00\x03\xff\xff\xfd\xfd"


def test_mixed_models_read_write_sync(emu, bus):
    assert bus.ping_model(1) == XL430_W250.model_number and bus.ping_model(6) == XL330_M288.model_number
    assert bus.ping_model(9) is None
    ids = range(1, 7)
    assert bus.sync_read("Present_Position", ids) == {i: 2048 for i in ids}
    bus.sync_write("Goal_Position", {i: -100 * i for i in ids})  # signed 4-byte words
    assert bus.sync_read("Goal_Position", ids) == {i: -100 * i for i in ids}
    bus.write(3, "Goal_Position", 3000)
    assert emu.get(3, "Goal_Position") == 3000 and bus.read(3, "Goal_Position") == 3000
    emu.set(2, "Present_Load", -50)  # XL430: no current sensing, a load register at 126
    assert bus.read(2, "Present_Load") == -50
    with pytest.raises(KeyError, match="Present_Load"):
        bus.read(3, "Present_Load")
    both = bus.sync_read_span(("Present_Velocity", "Present_Position"), [1, 3])
    assert both == {1: {"Present_Velocity": 0, "Present_Position": 2048}, 3: {"Present_Velocity": 0,
                                                                             "Present_Position": 2048}}


def test_sdk_reads_what_the_bus_wrote(emu, bus):
    """The emulator answers the vendor SDK too: the bus, the emulator and the SDK agree on the wire."""
    sdk = pytest.importorskip("dynamixel_sdk", reason="dynamixel-sdk (extra 'dynamixel') not installed")
    bus.sync_write("Goal_Position", {4: 1234, 5: 4321})
    bus.close()
    port = sdk.PortHandler(emu.port)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        ph = sdk.PacketHandler(2.0)

        def patiently(call, ok):  # the SDK's own answer timeout is ~20 ms: a loaded machine may miss one
            for _ in range(5):
                out = call()
                if ok(out) or (out[1] if isinstance(out, tuple) else out) != sdk.COMM_RX_TIMEOUT:
                    return out
            return out

        assert patiently(lambda: ph.ping(port, 1), lambda r: r[1] == sdk.COMM_SUCCESS) == \
            (XL430_W250.model_number, sdk.COMM_SUCCESS, 0)
        sr = sdk.GroupSyncRead(port, ph, 116, 4)
        for i in (4, 5):
            sr.addParam(i)
        assert patiently(sr.txRxPacket, lambda r: r == sdk.COMM_SUCCESS) == sdk.COMM_SUCCESS
        assert [sr.getData(i, 116, 4) for i in (4, 5)] == [1234, 4321]
    finally:
        port.closePort()


@pytest.mark.parametrize("fault,kind,words", [("silent", "timeout", "silent"), ("corrupt", "checksum", "garbled"),
                                              ("wrong_id", "wrong_id", "wrong id")])
def test_faults_name_the_servo_and_the_cause(emu, bus, fault, kind, words):
    if fault == "wrong_id":
        emu.wrong_id[4] = 9
    else:
        getattr(emu, fault).add(4)
    for call in (lambda: bus.read(4, "Present_Position"), lambda: bus.sync_read("Present_Position", [1, 4, 6])):
        with pytest.raises(DeviceFaultError) as ei:
            call()
        assert ei.value.kind == kind and ei.value.servo_id == 4
        assert emu.port in str(ei.value) and "servo 4" in str(ei.value) and words in str(ei.value)
    assert bus.sync_read("Present_Position", [1, 6]) == {1: 2048, 6: 2048}


def test_status_errors_alert_and_access(emu, bus):
    emu.error_bits[2] = 0x80
    with pytest.raises(DeviceFaultError, match="servo 2.*hardware error.*Hardware_Error_Status") as ei:
        bus.sync_read("Present_Position", [1, 2])
    assert ei.value.kind == "servo_error"
    emu.error_bits.clear()
    bus.write(3, "Torque_Enable", 1)
    with pytest.raises(DeviceFaultError, match="servo 3.*access error.*torque off"):
        bus.write(3, "Operating_Mode", 4)  # EEPROM with torque on
    bus.write(3, "Torque_Enable", 0)
    bus.write(3, "Operating_Mode", 4)
    assert emu.get(3, "Operating_Mode") == 4


def test_late_short_and_impossible_answers(emu):
    emu.set(2, "Goal_Position", -777)
    with _bus(emu, timeout_s=0.05) as bus:
        emu.late[2] = 0.08
        with pytest.raises(DeviceFaultError, match="servo 2"):
            bus.read(2, "Present_Position")
        emu.late.clear()
        assert bus.read(2, "Goal_Position") == -777  # never the late Present_Position
        assert bus.stats.resyncs == 1 and bus.stats.stale >= 1
        emu.short_answer.add(5)
        with pytest.raises(DeviceFaultError, match=r"servo 5.*3 data byte\(s\) where 4") as ei:
            bus.sync_read("Present_Position", [1, 5])
        assert ei.value.kind == "malformed"
        emu.short_answer.clear()
        emu.set(6, "Torque_Enable", 9)
        with pytest.raises(DeviceFaultError, match="servo 6.*Torque_Enable = 9 lies outside 0..1"):
            bus.read(6, "Torque_Enable")


def test_adapter_echo_is_ignored():
    with DynamixelBusEmulator() as emu, _bus(emu) as bus:
        emu.echo = True
        assert bus.sync_read("Present_Position", [1, 2, 3]) == {1: 2048, 2: 2048, 3: 2048}
        bus.write(1, "Goal_Position", 100)
        assert bus.read(1, "Goal_Position") == 100


def test_scan_set_id_and_find_servos():
    with DynamixelBusEmulator(ids=(1, 3), models={1: XL430_W250}) as emu:
        with _bus(emu) as bus:
            found = scan(bus, ids=range(0, 6), timeout_s=0.02)
            assert found.servos == {1: 1060, 3: 1200} and found.protocol == "dynamixel2"
            assert found.model_name(1) == "xl430-w250" and found.baudrate == 1_000_000
            set_id(bus, 3, 7)
            assert bus.ping_model(7) == 1200 and not bus.ping(3)
            with pytest.raises(DeviceFaultError, match="id 1 is already taken"):
                set_id(bus, 7, 1)
        hits = find_servos(emu.port, baudrates=(1_000_000,), ids=range(0, 9), timeout_s=0.02)
        assert [(h.protocol, h.servos) for h in hits] == [("dynamixel2", {1: 1060, 7: 1200})]
    with FeetechBusEmulator(ids=(2,)) as emu:
        hits = find_servos(emu.port, baudrates=(1_000_000,), ids=range(0, 4), timeout_s=0.02)
        assert [(h.protocol, h.servos) for h in hits] == [("feetech", {2: 777})]


def test_models_are_data():
    assert model_by_name("xl330-m288").protocol == "dynamixel2"
    with pytest.raises(ValueError, match="known models"):
        model_by_name("sts3215", protocol="dynamixel2")
    for name in ("xl430-w250", "xm430-w350", "xm540-w270", "xc430-w150"):
        m = model_by_name(name)
        assert m.resolution == 4096 and m.register("Goal_Position") == (116, 4)
        assert m.encode("Goal_Position", -1) == b"\xff\xff\xff\xff" and m.decode("Goal_Position", b"\xff" * 4) == -1
