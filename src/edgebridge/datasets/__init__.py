"""LeRobotDataset v3.0 files (numpy, pyarrow, PyAV; no torch): :mod:`.lerobot_v3`."""
