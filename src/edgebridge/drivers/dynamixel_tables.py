"""Dynamixel X-series facts as data (protocol 2.0): control tables, models, status and hardware errors.

Sources: the ROBOTIS e-Manual control tables of the X series (XL330, XL430, XC430, XM430, XM540), the
same addresses LeRobot's Dynamixel bus uses. Every X model has 4096 ticks per turn and little-endian
words; positions, velocities and currents are two's complement. XL430 and XC430 have no current sensing:
no Current_Limit / Goal_Current, and address 126 holds Present_Load. Used by: Koch v1.1 (XL430-W250 +
XL330-M288), ALOHA / ViperX and WidowX (XM430-W350, XM540-W270), OpenManipulator-X (XM430-W350).
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from .servo_protocol import ServoModel

BROADCAST_ID = 0xFE
MAX_ID = 0xFC

# Instructions.
INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REBOOT = 0x08
INST_STATUS = 0x55
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

# Status packet error byte: bit 7 = hardware alert, bits 0-6 = error number.
ERR_ALERT = 0x80
ERROR_NUMBERS = {
    1: "result fail (the instruction could not be processed)",
    2: "instruction error (undefined instruction, or REG_WRITE missing)",
    3: "CRC error in the instruction packet",
    4: "data range error (value outside the register's range)",
    5: "data length error (too short for the register)",
    6: "data limit error (value beyond a limit register)",
    7: "access error (a read-only register, or an EEPROM register written with torque on)",
}
# Hardware_Error_Status bits.
HARDWARE_ERRORS = {
    0x01: "input voltage", 0x04: "overheating", 0x08: "motor encoder", 0x10: "electrical shock",
    0x20: "overload",
}

X_CONTROL_TABLE: Mapping[str, tuple[int, int]] = MappingProxyType({
    # EEPROM (written with torque off)
    "Model_Number": (0, 2),
    "Model_Information": (2, 4),
    "Firmware_Version": (6, 1),
    "ID": (7, 1),
    "Baud_Rate": (8, 1),
    "Return_Delay_Time": (9, 1),
    "Drive_Mode": (10, 1),
    "Operating_Mode": (11, 1),
    "Secondary_ID": (12, 1),
    "Protocol_Type": (13, 1),
    "Homing_Offset": (20, 4),
    "Moving_Threshold": (24, 4),
    "Temperature_Limit": (31, 1),
    "Max_Voltage_Limit": (32, 2),
    "Min_Voltage_Limit": (34, 2),
    "PWM_Limit": (36, 2),
    "Current_Limit": (38, 2),
    "Acceleration_Limit": (40, 4),
    "Velocity_Limit": (44, 4),
    "Max_Position_Limit": (48, 4),
    "Min_Position_Limit": (52, 4),
    "Shutdown": (63, 1),
    # RAM
    "Torque_Enable": (64, 1),
    "LED": (65, 1),
    "Status_Return_Level": (68, 1),
    "Registered_Instruction": (69, 1),
    "Hardware_Error_Status": (70, 1),
    "Velocity_I_Gain": (76, 2),
    "Velocity_P_Gain": (78, 2),
    "Position_D_Gain": (80, 2),
    "Position_I_Gain": (82, 2),
    "Position_P_Gain": (84, 2),
    "Feedforward_2nd_Gain": (88, 2),
    "Feedforward_1st_Gain": (90, 2),
    "Bus_Watchdog": (98, 1),
    "Goal_PWM": (100, 2),
    "Goal_Current": (102, 2),
    "Goal_Velocity": (104, 4),
    "Profile_Acceleration": (108, 4),
    "Profile_Velocity": (112, 4),
    "Goal_Position": (116, 4),
    "Realtime_Tick": (120, 2),
    "Moving": (122, 1),
    "Moving_Status": (123, 1),
    "Present_PWM": (124, 2),
    "Present_Current": (126, 2),
    "Present_Velocity": (128, 4),
    "Present_Position": (132, 4),
    "Velocity_Trajectory": (136, 4),
    "Position_Trajectory": (140, 4),
    "Present_Input_Voltage": (144, 2),
    "Present_Temperature": (146, 1),
})

_NO_CURRENT = {k: v for k, v in X_CONTROL_TABLE.items() if k not in ("Current_Limit", "Goal_Current",
                                                                        "Present_Current")}
_NO_CURRENT["Present_Load"] = (126, 2)
X_NO_CURRENT_CONTROL_TABLE: Mapping[str, tuple[int, int]] = MappingProxyType(_NO_CURRENT)

SIGNED = frozenset({"Homing_Offset", "Goal_PWM", "Goal_Current", "Goal_Velocity", "Goal_Position", "Present_PWM",
                    "Present_Current", "Present_Load", "Present_Velocity", "Present_Position",
                    "Velocity_Trajectory", "Position_Trajectory"})

READ_ONLY = frozenset({"Model_Number", "Model_Information", "Firmware_Version", "Registered_Instruction",
                       "Hardware_Error_Status", "Realtime_Tick", "Moving", "Moving_Status", "Present_PWM",
                       "Present_Current", "Present_Load", "Present_Velocity", "Present_Position",
                       "Velocity_Trajectory", "Position_Trajectory", "Present_Input_Voltage",
                       "Present_Temperature"})

# What an answer can hold (positions in extended mode span +-256 turns; Present_Position keeps counting).
RANGES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "Goal_Position": (-1_048_575, 1_048_575),
    "Torque_Enable": (0, 1),
    "Operating_Mode": (0, 16),
    "ID": (0, MAX_ID),
    "Present_Temperature": (0, 150),
    "Present_Input_Voltage": (0, 300),
})

# Baud_Rate register: baud -> code.
BAUD_CODES: Mapping[int, int] = MappingProxyType({
    9_600: 0, 57_600: 1, 115_200: 2, 1_000_000: 3, 2_000_000: 4, 3_000_000: 5, 4_000_000: 6,
})

# Operating_Mode: 3 position, 4 extended position (multi-turn), 5 current-based position.
POSITION_MODES = (3, 4, 5)
VELOCITY_UNIT_RAD_S = 0.229 * 2 * math.pi / 60  # Present_Velocity: 0.229 rev/min


def _x(name: str, number: int, current: bool = True) -> ServoModel:
    return ServoModel(name, number, 4096, X_CONTROL_TABLE if current else X_NO_CURRENT_CONTROL_TABLE,
                      "dynamixel2", little_endian=True, signed=SIGNED, read_only=READ_ONLY, ranges=RANGES,
                      velocity_unit_rad_s=VELOCITY_UNIT_RAD_S,
                      position_modes=POSITION_MODES if current else (3, 4),
                      acceleration=("Profile_Acceleration", 32767), baud_codes=BAUD_CODES)


XL330_M077 = _x("xl330-m077", 1190)
XL330_M288 = _x("xl330-m288", 1200)
XL430_W250 = _x("xl430-w250", 1060, current=False)
XC430_W150 = _x("xc430-w150", 1070, current=False)
XC430_W240 = _x("xc430-w240", 1080, current=False)
XM430_W210 = _x("xm430-w210", 1030)
XM430_W350 = _x("xm430-w350", 1020)
XM540_W150 = _x("xm540-w150", 1130)
XM540_W270 = _x("xm540-w270", 1120)

MODELS: Mapping[str, ServoModel] = MappingProxyType({m.name: m for m in (
    XL330_M077, XL330_M288, XL430_W250, XC430_W150, XC430_W240, XM430_W210, XM430_W350, XM540_W150, XM540_W270)})
