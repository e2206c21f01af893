"""Runtime inputs for the expert backends, taken from one synthetic episode (helpers.synth)."""

from __future__ import annotations

import numpy as np

from edgebridge.contracts import ArmState, Guidance, PointCloud, Pose

from helpers.synth import make_episode


def observation(seed: int = 5, step: int = 5):
    """(cloud, state, guidance) contracts from one synthetic episode step, stamps consistent."""
    ep = make_episode(np.random.default_rng(seed))
    t0 = 10**9
    cloud = PointCloud(ep["cloud"][step], n_valid=int(ep["cloud_n_valid"][step]))
    state = ArmState(np.zeros(7), Pose(ep["ee_pose"][step, :3], ep["ee_pose"][step, 3:]), float(ep["gripper"][step]),
                     stamp_ns=t0 + int(round(ep["t"][step] * 1e9)))
    g = ep["guidance"]
    guidance = Guidance(ep["guidance_t"], g[:, :3], g[:, 3:7], g[:, 7], stamp_ns=t0)
    return cloud, state, guidance, ep
