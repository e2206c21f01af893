"""Write a small data set with ``lerobot-dataset``'s own ``LeRobotDataset.create`` (a plain arm recording: joint
state, joint action, one camera), for edgebridge's reader to open. Runs inside the LeRobot check environment.

    python make_dataset.py ROOT VALUES.npz   -> the data set under ROOT; what was added, per frame, in VALUES.npz
"""

import sys

import numpy as np
from ledataset.datasets.lerobot_dataset import LeRobotDataset

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]


def main(root: str, values: str) -> int:
    feats = {"observation.state": {"dtype": "float32", "shape": (6,), "names": JOINTS},
             "action": {"dtype": "float32", "shape": (6,), "names": JOINTS},
             "observation.images.front": {"dtype": "video", "shape": (32, 48, 3),
                                          "names": ["height", "width", "channels"]}}
    ds = LeRobotDataset.create("edgebridge/plain", fps=10, features=feats, root=root, robot_type="so101_follower",
                               use_videos=True)
    rng = np.random.default_rng(1)
    out = {"state": [], "action": [], "rgb": [], "episode": []}
    g = 0
    for e, n in enumerate((5, 7)):
        for _ in range(n):
            rgb = np.full((32, 48, 3), (24 * g) % 256, np.uint8)
            s, a = rng.random(6).astype(np.float32), rng.random(6).astype(np.float32)
            ds.add_frame({"observation.state": s, "action": a, "observation.images.front": rgb, "task": f"pick {e}"})
            for k, v in (("state", s), ("action", a), ("rgb", rgb), ("episode", e)):
                out[k].append(v)
            g += 1
        ds.save_episode()
    ds.finalize()
    np.savez(values, **{k: np.stack(v) for k, v in out.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
