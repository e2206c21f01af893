"""Are another task's clouds new to a trained action expert? Novelty in its point-cloud feature space.

Before running the expert on a task it was not trained on, this measures whether its PointNet encoder
sees that task's clouds as unlike its training clouds. Each sample's cloud is featurised exactly as in
training (goal-centred, plan moved by a Gaussian offset of the run's ``plan_shift_m`` std, cropped to
the region of interest, resampled to N points) and encoded; two novelty scores per sample:

* Mahalanobis distance to the training features (covariance shrunk towards its mean variance by
  ``--shrink``);
* distance to the ``--knn``-th nearest training feature.

A sample counts as *novel* when its score exceeds the ``--percentile`` percentile of the training samples'
own scores (the training sample itself excluded for the neighbour score). The table gives the novel
fraction per set and phase of the episode: ``approach`` (gripper open, before the first grasp),
``carry`` (gripper closed) and ``release`` (open again). The baseline is the run's own validation
episodes (never trained on): a fraction near ``1 - percentile/100`` there means the scores are calibrated.

    python benchmarks/expert_novelty.py --run build/weights/run --demos build/weights/demos/put_cup_in_tray \\
        --other build/demos/stack_red_on_blue [--other DIR ...] [--json FILE]

``--run`` is a finished training run (``final.pt``, ``norm.json``; ``make weights`` leaves the shipped one in
``build/weights/run``), ``--demos`` the demonstrations it was trained on, ``--other`` demonstrations of
other tasks (``edge-sim demos --task stack_red_on_blue --episodes 60 --out build/demos/stack_red_on_blue``).
``--json`` keys: ``novel_mahalanobis.<set>.<phase>``, ``novel_knn.<set>.<phase>``, ``samples.<set>.<phase>``
with ``<set>`` = ``validation`` or the ``--other`` directory's name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, machine_line, print_table, write_json  # noqa: E402

PHASES = ("approach", "carry", "release")
OPEN = 0.97  # gripper reading above this = open (a grasped mug or cube holds the fingers at about 0.65)


def episode_phases(episode: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """Per sample 0 = approach (open, before the episode's first grasp), 1 = carry (closed), 2 = release
    (open again). Samples of one episode must be in time order, as ``load_demos`` returns them."""
    phase = np.zeros(len(episode), np.int64)
    for e in np.unique(episode):
        rows = np.flatnonzero(episode == e)
        closed = gripper[rows] < OPEN
        first = int(np.argmax(closed)) if closed.any() else len(rows)
        phase[rows] = np.where(np.arange(len(rows)) < first, 0, np.where(closed, 1, 2))
    return phase


class FeatureSpace:
    """The trained encoder and the statistics of its training features."""

    def __init__(self, run: Path, train_set, shrink: float, knn: int, seed: int) -> None:
        import torch

        from edgebridge.runtime.expert.features import CloudROI, Normalizer
        from edgebridge.train.appf import load_final

        torch.set_num_threads(2)
        self.torch = torch
        self.net, rec = load_final(run)
        self.norm = Normalizer.from_dict(json.loads((run / "norm.json").read_text()))
        self.roi = CloudROI.from_dict(rec["data"].get("cloud_roi"))
        self.plan_shift_m = float(rec["train_config"].get("plan_shift_m", 0.0))
        self.gen = torch.Generator().manual_seed(seed)
        self.knn = knn
        self.train = self.features(train_set)
        self.mean = self.train.mean(0)
        centred = self.train - self.mean
        cov = centred.T @ centred / len(centred)
        cov += shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
        self.cov_inv = np.linalg.inv(cov)
        self.train_t = torch.from_numpy(self.train)

    def features(self, ds) -> np.ndarray:
        """(S, F) encoder features of every sample of ``ds``, plan moved as in training."""
        from edgebridge.train.appf import fit_clouds, shift_plan

        torch = self.torch
        out = []
        for i in range(0, len(ds), 512):
            sl = slice(i, i + 512)
            cloud = torch.from_numpy(self.norm.normalize("cloud", ds.cloud[sl]))
            guidance = torch.from_numpy(self.norm.normalize("guidance", ds.guidance[sl]))
            action = torch.from_numpy(self.norm.normalize("action", ds.action[sl]))
            shift = self.plan_shift_m * torch.randn((len(cloud), 3), generator=self.gen)  # as in training
            cloud, _, _ = shift_plan(self.norm, shift, cloud, guidance, action)
            cloud = fit_clouds(cloud, self.net.cfg.n_points, self.norm, self.roi)
            with torch.no_grad():
                out.append(self.net.cloud_encoder(cloud).numpy().astype(np.float64))
        return np.concatenate(out)

    def mahalanobis(self, f: np.ndarray) -> np.ndarray:
        d = f - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.cov_inv, d))

    def neighbour(self, f: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        d = self.torch.cdist(self.torch.from_numpy(f), self.train_t)
        return d.topk(self.knn + int(exclude_self), largest=False).values[:, -1].numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="finished training run directory")
    ap.add_argument("--demos", type=Path, nargs="+", required=True, help="the run's demonstration directories")
    ap.add_argument("--other", type=Path, action="append", default=[], help="demonstrations of another task")
    ap.add_argument("--percentile", type=float, default=99.0)
    ap.add_argument("--shrink", type=float, default=0.01)
    ap.add_argument("--knn", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if not (args.run / "final.pt").exists():
        ap.error(f"{args.run}: no final.pt; run `make weights` (or `python -m edgebridge.train`) first")

    from edgebridge.train.data import load_demos

    cfg = json.loads((args.run / "config.json").read_text())
    train_set, val_set = load_demos(list(args.demos)).split(cfg["val_fraction"], cfg["seed"])
    space = FeatureSpace(args.run, train_set, args.shrink, args.knn, args.seed)
    md_cut = np.percentile(space.mahalanobis(space.train), args.percentile)
    step = max(1, len(space.train) // 1000)  # the neighbour threshold from 1000 training samples
    nn_cut = np.percentile(space.neighbour(space.train[::step], exclude_self=True), args.percentile)

    sets = {"validation": val_set} | {d.name: load_demos([d]) for d in args.other}
    results: dict = {"percentile": args.percentile, "train_samples": len(train_set)}
    rows = []
    for name, ds in sets.items():
        f = space.features(ds)
        md, nn = space.mahalanobis(f) > md_cut, space.neighbour(f) > nn_cut
        phase = episode_phases(ds.episode, ds.proprio[:, 9])
        for p, pname in enumerate(PHASES):
            sel = phase == p
            if not sel.any():
                continue
            key = f"{name}.{pname}"
            results[f"samples.{key}"] = int(sel.sum())
            results[f"novel_mahalanobis.{key}"] = float(md[sel].mean())
            results[f"novel_knn.{key}"] = float(nn[sel].mean())
            rows.append((name, pname, int(sel.sum()), f"{md[sel].mean():.2f}", f"{nn[sel].mean():.2f}"))
    print_table(f"Novel to the expert's cloud encoder (score > training p{args.percentile:g})",
                ["set", "phase", "samples", "Mahalanobis", f"{args.knn}-NN"], rows,
                caption=f"{args.run} | {len(train_set)} training samples | {machine_line()}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
