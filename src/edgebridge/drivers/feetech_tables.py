"""Feetech STS/SCS servo facts as data: control tables, models, status error bits.

A register is ``(address, n_bytes)``; ``SIGN_BITS`` names registers stored sign-magnitude (the bit that
carries the sign); ``RANGES`` the values a real answer can hold. Sources: Feetech's STS/SMS and SCS memory
tables (the STS3215 of the SO-100/SO-101 arms is an STS-series servo: 4096 ticks per turn, little-endian
words; Operating_Mode 0 is position control).
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from .servo_protocol import ServoModel

# Instructions (Feetech "SCS" protocol, same framing as Dynamixel protocol 1.0).
INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

BROADCAST_ID = 0xFE
MAX_ID = 0xFD

# Status packet error byte.
STATUS_ERRORS = {
    0x01: "input voltage out of range",
    0x02: "angle sensor error",
    0x04: "overheating",
    0x08: "overcurrent",
    0x20: "overload",
}

STS_CONTROL_TABLE: Mapping[str, tuple[int, int]] = MappingProxyType({
    # EEPROM
    "Firmware_Major_Version": (0, 1),
    "Firmware_Minor_Version": (1, 1),
    "Model_Number": (3, 2),
    "ID": (5, 1),
    "Baud_Rate": (6, 1),
    "Return_Delay_Time": (7, 1),
    "Response_Status_Level": (8, 1),
    "Min_Position_Limit": (9, 2),
    "Max_Position_Limit": (11, 2),
    "Max_Temperature_Limit": (13, 1),
    "Max_Voltage_Limit": (14, 1),
    "Min_Voltage_Limit": (15, 1),
    "Max_Torque_Limit": (16, 2),
    "Phase": (18, 1),
    "Unloading_Condition": (19, 1),
    "LED_Alarm_Condition": (20, 1),
    "P_Coefficient": (21, 1),
    "D_Coefficient": (22, 1),
    "I_Coefficient": (23, 1),
    "Minimum_Startup_Force": (24, 2),
    "CW_Dead_Zone": (26, 1),
    "CCW_Dead_Zone": (27, 1),
    "Protection_Current": (28, 2),
    "Angular_Resolution": (30, 1),
    "Homing_Offset": (31, 2),
    "Operating_Mode": (33, 1),
    "Protective_Torque": (34, 1),
    "Protection_Time": (35, 1),
    "Overload_Torque": (36, 1),
    # SRAM
    "Torque_Enable": (40, 1),
    "Acceleration": (41, 1),
    "Goal_Position": (42, 2),
    "Goal_Time": (44, 2),
    "Goal_Velocity": (46, 2),
    "Torque_Limit": (48, 2),
    "Lock": (55, 1),
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Present_Load": (60, 2),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Moving": (66, 1),
    "Present_Current": (69, 2),
})

SCS_CONTROL_TABLE: Mapping[str, tuple[int, int]] = MappingProxyType({
    "Firmware_Major_Version": (0, 1),
    "Firmware_Minor_Version": (1, 1),
    "Model_Number": (3, 2),
    "ID": (5, 1),
    "Baud_Rate": (6, 1),
    "Return_Delay_Time": (7, 1),
    "Response_Status_Level": (8, 1),
    "Min_Position_Limit": (9, 2),
    "Max_Position_Limit": (11, 2),
    "Max_Temperature_Limit": (13, 1),
    "Max_Voltage_Limit": (14, 1),
    "Min_Voltage_Limit": (15, 1),
    "Max_Torque_Limit": (16, 2),
    "Torque_Enable": (40, 1),
    "Acceleration": (41, 1),
    "Goal_Position": (42, 2),
    "Running_Time": (44, 2),
    "Goal_Velocity": (46, 2),
    "Lock": (48, 1),
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Present_Load": (60, 2),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Moving": (66, 1),
})

# Registers stored sign-magnitude: name -> index of the sign bit.
STS_SIGN_BITS: Mapping[str, int] = MappingProxyType({
    "Homing_Offset": 11,
    "Goal_Velocity": 15,
    "Present_Velocity": 15,
    "Present_Load": 10,
})

READ_ONLY = frozenset({
    "Firmware_Major_Version", "Firmware_Minor_Version", "Model_Number", "Present_Position",
    "Present_Velocity", "Present_Load", "Present_Voltage", "Present_Temperature", "Status", "Moving",
    "Present_Current",
})


STS_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "Present_Position": (0, 4095),
    "Goal_Position": (0, 4095),
    "Operating_Mode": (0, 3),
    "Present_Temperature": (0, 150),
    "Present_Voltage": (0, 250),
    "ID": (0, MAX_ID),
})
SCS_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "Present_Position": (0, 1023),
    "Goal_Position": (0, 1023),
    "Present_Temperature": (0, 150),
    "ID": (0, MAX_ID),
})

# Baud_Rate register: baud -> code (STS/SCS).
BAUD_CODES: Mapping[int, int] = MappingProxyType({
    1_000_000: 0, 500_000: 1, 250_000: 2, 128_000: 3, 115_200: 4, 57_600: 5, 38_400: 6, 19_200: 7,
})


def _feetech(name: str, number: int, resolution: int, table, sign_bits, ranges, little_endian: bool) -> ServoModel:
    return ServoModel(name, number, resolution, table, "feetech", little_endian=little_endian, sign_bits=sign_bits,
                      read_only=READ_ONLY, ranges=ranges, velocity_unit_rad_s=2 * math.pi / resolution,
                      position_modes=(0,), acceleration=("Acceleration", 254), baud_codes=BAUD_CODES)


STS3215 = _feetech("sts3215", 777, 4096, STS_CONTROL_TABLE, STS_SIGN_BITS, STS_RANGES, little_endian=True)
STS3250 = _feetech("sts3250", 2825, 4096, STS_CONTROL_TABLE, STS_SIGN_BITS, STS_RANGES, little_endian=True)
SCS0009 = _feetech("scs0009", 1284, 1024, SCS_CONTROL_TABLE, MappingProxyType({}), SCS_RANGES, little_endian=False)

MODELS: Mapping[str, ServoModel] = MappingProxyType({m.name: m for m in (STS3215, STS3250, SCS0009)})


def model_by_name(name: str) -> ServoModel:
    """A Feetech model by name (``servo_protocol.model_by_name`` looks in every family)."""
    try:
        return MODELS[name]
    except KeyError as e:
        raise ValueError(f"unknown servo model {name!r}; known models: {', '.join(MODELS)}") from e
