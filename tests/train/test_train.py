"""APPF training: both stages run, logs and checkpoints are written, a run resumes exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.train.appf import StageConfig, Trainer, TrainConfig, load_final  # noqa: E402
from edgebridge.train.data import DemoError, load_demos  # noqa: E402
from edgebridge.train.model import ExpertNetConfig  # noqa: E402


def _cfg(**kw) -> TrainConfig:
    base = dict(model=ExpertNetConfig(**TINY), stage1=StageConfig(4, 32, 1e-3, False),
                stage2=StageConfig(4, 16, 1e-3, True), eval_every=2, ckpt_every=2, warmup=2, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_logs_checkpoints_and_metrics(tiny_run):
    for name in ("config.json", "norm.json", "log.csv", "log.json", "curves.png", "ckpt.pt", "final.pt", "metrics.json"):
        assert (tiny_run / name).exists(), name
    rows = list(csv.DictReader(open(tiny_run / "log.csv")))
    assert [int(r["stage"]) for r in rows] == [1] * 4 + [2] * 4
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert sum(1 for r in rows if r["val_loss"]) == 4  # every eval_every steps in both stages
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["val_pos_err_mm"] > 0 and metrics["parameters"] > 0
    # the runtime samples from zero initial noise: that error is measured too, and differs from a sampled start
    assert metrics["val_pos_err_zero_mm"] > 0 and metrics["val_pos_err_zero_mm"] != metrics["val_pos_err_mm"]
    assert metrics["train_device"] == "cpu"
    net, rec = load_final(tiny_run)
    assert rec["command"] == "pytest tiny run" and rec["spec"]["horizon"] == 16 and "cloud" in rec["norm"]


@pytest.mark.slow
def test_resume_continues_exactly(demo_dir, tmp_path):
    cfg = _cfg()
    whole = tmp_path / "whole"
    Trainer([demo_dir], whole, cfg).run()
    # stop after 2 of 4 stage-1 steps (a checkpoint is written there), then rerun the same command
    part = tmp_path / "part"
    first = Trainer([demo_dir], part, cfg)
    first._run_stage(1, StageConfig(2, 32, 1e-3, False))
    second = Trainer([demo_dir], part, cfg)
    assert (second.stage, second.step) == (1, 2)
    second.run()
    a, _ = load_final(whole)
    b, _ = load_final(part)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=f"parameter {name} differs after resume")
    rows = json.loads((part / "log.json").read_text())
    assert [(r["stage"], r["step"]) for r in rows] == [(1, i) for i in range(1, 5)] + [(2, i) for i in range(1, 5)]


def test_training_device_is_checked(demo_dir, tmp_path):
    with pytest.raises(ValueError, match="use 'cpu' or 'cuda"):
        Trainer([demo_dir], tmp_path / "a", _cfg(), device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU; train with --device cpu"):
            Trainer([demo_dir], tmp_path / "b", _cfg(), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="training on cuda needs an NVIDIA GPU and a CUDA torch")
def test_cuda_training_runs_resumes_and_loads_on_cpu(demo_dir, tmp_path):
    run = tmp_path / "gpu"
    first = Trainer([demo_dir], run, _cfg(), device="cuda")
    first._run_stage(1, StageConfig(2, 32, 1e-3, False))
    metrics = Trainer([demo_dir], run, _cfg(), device="cuda").run()
    assert metrics["train_device"] == "cuda" and np.isfinite(metrics["val_loss"])
    net, _ = load_final(run)
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_resume_refuses_a_different_config(demo_dir, tmp_path):
    Trainer([demo_dir], tmp_path, _cfg())._save()
    with pytest.raises(ValueError, match="different training config"):
        Trainer([demo_dir], tmp_path, _cfg(goal_noise=0.5))


def test_demo_errors_name_the_file(tmp_path, demo_dir):
    with pytest.raises(DemoError, match="meta.json: not found"):
        load_demos(tmp_path)
    (tmp_path / "meta.json").write_text('{"n_points": 512}')
    with pytest.raises(DemoError, match="no episode_"):
        load_demos(tmp_path)
    ep = dict(np.load(next(demo_dir.glob("episode_*.npz"))))
    ep["action"] = ep["action"][:, :8]
    np.savez(tmp_path / "episode_000000.npz", **ep)
    with pytest.raises(DemoError, match=r"episode_000000.npz: action has shape"):
        load_demos(tmp_path)


def test_cli_parses_and_builds_config():
    from edgebridge.train.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(["--demos", "d", "--run", "r", "--stage1-steps", "7", "--goal-noise", "0.2",
                                      "--plan-shift", "0.03", "--clean-plans", "0.25", "--tiny"])
    cfg = config_from_args(args)
    assert cfg.clean_plan_fraction == 0.25 and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.stage1.steps == 7 and not cfg.stage1.use_cloud and cfg.stage2.use_cloud
    assert cfg.goal_noise == 0.2 and cfg.plan_shift_m == 0.03 and cfg.stage2.batch == 256
    with pytest.raises(ValueError, match="plan_shift_m"):
        TrainConfig(plan_shift_m=-0.01)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from edgebridge.train.__main__ import main

    assert main(["--demos", str(tmp_path / "missing"), "--run", str(tmp_path / "run"), "--tiny"]) == 2
    err = capsys.readouterr().err
    assert "missing/meta.json: not found" in err and "edge-sim demos --out" in err and "Traceback" not in err
    assert main(["--demos", str(tmp_path), "--run", str(tmp_path / "run"), "--goal-noise", "-1", "--tiny"]) == 2
    assert "goal_noise: must be >= 0, got -1.0" in capsys.readouterr().err


def test_plan_shift_equals_featurising_a_shifted_plan():
    """The in-batch augmentation is exactly what the featurisation gives for a plan moved by the shift."""
    from edgebridge.runtime.expert.features import FeatureSpec, Normalizer, raw_features, residual_targets
    from edgebridge.train.appf import shift_plan

    spec = FeatureSpec(n_points=8, guidance_steps=4, horizon=4, action_dt=0.1)
    rng = np.random.default_rng(3)
    gt = np.linspace(0.0, 2.0, 21)
    g = np.zeros((21, 8))
    g[:, :3] = np.stack([0.3 + 0.1 * gt, 0.05 * np.sin(gt), 0.3 - 0.1 * gt], axis=1)
    g[:, 3], g[:, 7] = 1.0, (gt < 1.0)  # gripper down, a grasp at t = 1
    ee = np.concatenate([g[[2, 9], :3] + rng.normal(0, 0.01, (2, 3)), np.tile([1.0, 0, 0, 0], (2, 1))], axis=1)
    now = gt[[2, 9]]
    clouds = rng.normal(0.4, 0.1, (2, 8, 3))
    actions = np.concatenate([g[None, 3:7, :3] + 0.01, np.tile(g[None, 3:7, 3:], (1, 1, 1))], axis=-1)
    actions = np.repeat(actions, 2, axis=0)
    shift = np.array([[0.02, -0.01, 0.015], [-0.03, 0.0, 0.01]])

    def feats(plan_offset):
        out = []
        for b in range(2):
            gb = g.copy()
            gb[:, :3] += plan_offset[b]
            raw = raw_features(spec, clouds[b:b + 1], ee[b:b + 1], np.ones(1), gt, gb, now[b:b + 1])
            raw["action"] = residual_targets(spec, gt, gb, now[b:b + 1], actions[b:b + 1])
            out.append(raw)
        return {k: np.concatenate([o[k] for o in out]) for k in ("cloud", "guidance", "action")}

    base, moved = feats(np.zeros((2, 3))), feats(shift)
    norm = Normalizer.fit({"cloud": base["cloud"].reshape(-1, 3), "proprio": rng.normal(size=(4, 10)),
                           "guidance": base["guidance"].reshape(-1, 10), "action": base["action"].reshape(-1, 10)})
    t = {k: torch.from_numpy(norm.normalize(k, base[k])) for k in base}
    cloud, guidance, action = shift_plan(norm, torch.from_numpy(shift).float(), t["cloud"], t["guidance"], t["action"])
    for key, got in (("cloud", cloud), ("guidance", guidance), ("action", action)):
        np.testing.assert_allclose(got.numpy(), norm.normalize(key, moved[key]), atol=1e-5, err_msg=key)
    assert not np.allclose(t["action"].numpy(), action.numpy())  # the target really moved


def test_cancelling_plan_shift_leaves_a_zero_correction():
    from edgebridge.runtime.expert.features import Normalizer
    from edgebridge.train.appf import cancelling_plan_shift, shift_plan

    rng = np.random.default_rng(4)
    raw = np.zeros((3, 4, 10))
    raw[..., :3] = np.array([[0.02, -0.01, 0.0], [-0.03, 0.01, 0.005], [0.0, 0.0, 0.0]])[:, None, :]  # per sample
    raw[..., 3:] = rng.normal(0, 0.01, (3, 4, 7))  # rotation and gripper parts: left alone
    norm = Normalizer.fit({"cloud": rng.normal(size=(16, 3)), "proprio": rng.normal(size=(4, 10)),
                           "guidance": rng.normal(size=(8, 10)), "action": rng.normal(0, 0.02, (12, 10))})
    action = torch.from_numpy(norm.normalize("action", raw)).float()
    shift = cancelling_plan_shift(norm, action)
    np.testing.assert_allclose(shift.numpy(), raw[:, 0, :3], atol=1e-6)
    _, _, moved = shift_plan(norm, shift, None, torch.zeros(3, 5, 10), action)
    got = norm.unnormalize("action", moved.numpy())
    np.testing.assert_allclose(got[..., :3], 0.0, atol=1e-6)
    np.testing.assert_allclose(got[..., 3:], raw[..., 3:], atol=1e-6)
    with pytest.raises(ValueError, match="clean_plan_fraction"):
        TrainConfig(clean_plan_fraction=1.5)


def test_arm_shift_equals_featurising_a_moved_end_effector():
    from edgebridge.runtime.expert.features import FeatureSpec, Normalizer, raw_features
    from edgebridge.train.appf import shift_arm

    spec = FeatureSpec(n_points=8, guidance_steps=4, horizon=4, action_dt=0.1)
    rng = np.random.default_rng(5)
    gt = np.linspace(0.0, 2.0, 21)
    g = np.zeros((21, 8))
    g[:, :3] = np.stack([0.3 + 0.1 * gt, 0.05 * np.cos(gt), 0.3 - 0.1 * gt], axis=1)
    g[:, 3], g[:, 7] = 1.0, 1.0
    ee = np.concatenate([g[[4, 12], :3], np.tile([1.0, 0, 0, 0], (2, 1))], axis=1)
    shift = np.array([[0.04, -0.02, 0.01], [-0.01, 0.03, -0.02]])
    moved = ee.copy()
    moved[:, :3] += shift
    cloud = rng.normal(0.4, 0.1, (2, 8, 3))
    a = raw_features(spec, cloud, ee, np.ones(2), gt, g, gt[[4, 12]])
    b = raw_features(spec, cloud, moved, np.ones(2), gt, g, gt[[4, 12]])
    norm = Normalizer.fit({"cloud": a["cloud"].reshape(-1, 3), "proprio": a["proprio"] + rng.normal(0, 0.1, (2, 10)),
                           "guidance": a["guidance"].reshape(-1, 10), "action": rng.normal(size=(4, 10))})
    proprio, guidance = shift_arm(norm, torch.from_numpy(shift).float(),
                                  torch.from_numpy(norm.normalize("proprio", a["proprio"])),
                                  torch.from_numpy(norm.normalize("guidance", a["guidance"])))
    np.testing.assert_allclose(proprio.numpy(), norm.normalize("proprio", b["proprio"]), atol=1e-5)
    np.testing.assert_allclose(guidance.numpy(), norm.normalize("guidance", b["guidance"]), atol=1e-5)
    np.testing.assert_array_equal(a["cloud"], b["cloud"])  # the goal-centred cloud does not depend on the arm


def test_fit_clouds_crops_to_the_roi_and_resamples_like_the_runtime():
    from edgebridge.runtime.expert.features import CloudROI, Normalizer, resample_cloud
    from edgebridge.train.appf import fit_clouds

    rng = np.random.default_rng(2)
    roi = CloudROI(half_xy_m=0.1, below_m=0.05, above_m=0.1)
    raw = rng.uniform(-0.15, 0.15, (3, 64, 3))  # goal-centred, with a margin around the ROI
    raw[2, :, 0] = 0.5  # no point inside: kept whole
    norm = Normalizer.fit({"cloud": raw.reshape(-1, 3), "proprio": rng.normal(size=(4, 10)),
                           "guidance": rng.normal(size=(4, 10)), "action": rng.normal(size=(4, 10))})
    out = fit_clouds(torch.from_numpy(norm.normalize("cloud", raw)), 16, norm, roi).numpy()
    assert out.shape == (3, 16, 3)
    for b in range(2):
        inside = raw[b][np.all((raw[b] >= [-0.1, -0.1, -0.05]) & (raw[b] <= [0.1, 0.1, 0.1]), axis=1)]
        want = resample_cloud(inside, len(inside), 16)  # what the runtime does to a cloud cropped to the ROI
        np.testing.assert_allclose(norm.unnormalize("cloud", out[b]), want, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("cloud", out[2]), resample_cloud(raw[2], 64, 16), atol=1e-6)
    # without a ROI only the resampling
    same = fit_clouds(torch.from_numpy(norm.normalize("cloud", raw)), 64, norm, None)
    np.testing.assert_allclose(same.numpy(), norm.normalize("cloud", raw))
