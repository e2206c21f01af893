import pytest

pytest.importorskip("pybullet", reason="the simulator needs the 'sim' extra (pybullet)")
