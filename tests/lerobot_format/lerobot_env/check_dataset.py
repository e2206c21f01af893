"""Open an edgebridge-written data set with ``lerobot-dataset``'s ``LeRobotDataset`` and compare it with what was
written. Runs inside the LeRobot check environment (tests/lerobot_format/test_lerobot_library.py), never in the
project's own.

    python check_dataset.py ROOT EXPECTED.json   -> prints one JSON line; exit 1 with the mismatches listed

EXPECTED.json: ``frames``, ``episodes``, ``fps``, ``features`` ({key: shape}), ``tasks`` (by index),
``samples``: [{"index", "episode_index", "frame_index", "task", "values": {key: list or str}}],
``camera``: key, ``rgb_npy``: a .npy with the written RGB frame of every sample (S, H, W, 3), ``max_rgb_err``.
"""

import json
import sys

import numpy as np
from ledataset.datasets.lerobot_dataset import LeRobotDataset


def main(root: str, expected_path: str) -> int:
    exp = json.load(open(expected_path))
    ds = LeRobotDataset("edgebridge/check", root=root, video_backend="pyav")
    bad = []

    def check(ok, what):
        if not ok:
            bad.append(what)

    check(len(ds) == exp["frames"], f"len {len(ds)} != {exp['frames']}")
    check(ds.num_episodes == exp["episodes"], f"episodes {ds.num_episodes} != {exp['episodes']}")
    check(ds.fps == exp["fps"], f"fps {ds.fps} != {exp['fps']}")
    check(ds.meta.info["codebase_version"] == "v3.0", f"codebase_version {ds.meta.info['codebase_version']}")
    for key, shape in exp["features"].items():
        ft = ds.features.get(key)
        check(ft is not None and list(ft["shape"]) == shape, f"feature {key}: {ft} != shape {shape}")
    check(list(ds.meta.tasks.index) == exp["tasks"], f"tasks {list(ds.meta.tasks.index)} != {exp['tasks']}")
    check(ds.meta.stats is not None and all(k in ds.meta.stats for k in exp["features"] if k != "observation.plan"),
          "stats.json misses features")
    rgb = np.load(exp["rgb_npy"])
    errs = []
    for s, sample in enumerate(exp["samples"]):
        item = ds[sample["index"]]
        for k in ("index", "episode_index", "frame_index"):
            check(int(item[k]) == sample[k], f"sample {s}: {k} {int(item[k])} != {sample[k]}")
        check(item["task"] == sample["task"], f"sample {s}: task {item['task']!r} != {sample['task']!r}")
        for key, want in sample["values"].items():
            got = item[key]
            if isinstance(want, str):
                check(got == want, f"sample {s}: {key} {got!r} != {want!r}")
            else:
                got = got.numpy()
                check(got.shape == np.asarray(want).shape and np.allclose(got, want, atol=1e-6),
                      f"sample {s}: {key} differs (max {np.max(np.abs(got - np.asarray(want))) if got.shape == np.asarray(want).shape else got.shape})")
        frame = item[exp["camera"]].numpy()  # (3, H, W) float in [0, 1]
        want = rgb[s].transpose(2, 0, 1) / 255.0
        check(frame.shape == want.shape, f"sample {s}: camera frame {frame.shape} != {want.shape}")
        if frame.shape == want.shape:
            errs.append(float(np.mean(np.abs(frame - want))))
    check(errs and max(errs) <= exp["max_rgb_err"], f"decoded frames differ from the written ones: {errs}")
    print(json.dumps({"ok": not bad, "bad": bad, "rgb_err": errs, "len": len(ds), "episodes": ds.num_episodes}))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
