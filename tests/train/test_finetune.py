"""Fine-tuning: the weights are read back from fused and plain exports (and the shipped expert), a
fine-tuning run reports before/after, resumes, and exports like a training run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edgebridge.train.appf import load_final  # noqa: E402
from edgebridge.train.finetune import FineTuner, FinetuneConfig, InitError, load_init, recover_onnx  # noqa: E402
from edgebridge.train.model import DDIMSampler  # noqa: E402


def _ort(path, net, k, seed=3):
    import onnxruntime as ort

    c = net.cfg
    g = torch.Generator().manual_seed(seed)
    args = (torch.randn(2, c.n_points, 3, generator=g), torch.randn(2, c.pose_dim, generator=g),
            torch.randn(2, c.guidance_tokens, c.pose_dim, generator=g), torch.randn(2, c.horizon, c.pose_dim, generator=g))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["action"], {n: a.numpy() for n, a in zip(("cloud", "proprio", "guidance", "noise"), args)})[0]
    with torch.no_grad():
        return out, DDIMSampler(net.eval(), k)(*args).numpy()


def test_weights_come_back_from_a_fused_export(tiny_onnx, tiny_run):
    net, meta, timesteps = recover_onnx(tiny_onnx)
    assert meta["graph"] == "fused" and timesteps == DDIMSampler(net, 2).timesteps
    out, ref = _ort(tiny_onnx, net, 2)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # everything but the folded step-dependent parts is the training run's exactly
    trained, _ = load_final(tiny_run)
    for name, p in trained.state_dict().items():
        if not any(s in name for s in ("step_embed", ".film.", "final.1", "aux_head")):
            torch.testing.assert_close(net.state_dict()[name], p, msg=name)


def test_weights_come_back_from_a_plain_export(tiny_run, tmp_path):
    from edgebridge.export.expert import export_from_run

    path = export_from_run(tiny_run, tmp_path, k=2, graph="plain")
    net, _, timesteps = recover_onnx(path)
    assert timesteps is None  # every diffusion step is exact: the step embedding is in the graph
    trained, _ = load_final(tiny_run)
    for name, p in trained.state_dict().items():
        if not name.startswith("aux_head."):
            torch.testing.assert_close(net.state_dict()[name], p, msg=name)


def test_an_export_of_another_network_is_refused(tiny_onnx, tmp_path):
    bad = tmp_path / "expert.onnx"
    shutil.copy(tiny_onnx, bad)
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    meta["model_config"]["obs_feat"] = 48  # the metadata no longer describes the graph
    bad.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(InitError, match="not found in the graph"):
        recover_onnx(bad)
    with pytest.raises(InitError, match="no such file"):
        load_init(tmp_path / "missing.onnx")
    bad.with_suffix(".json").unlink()
    with pytest.raises(InitError, match="metadata"):
        recover_onnx(bad)


def test_finetune_reports_before_and_after_resumes_and_exports(demo_dir, tiny_onnx, tmp_path):
    from edgebridge.export.expert import export_from_run

    cfg = FinetuneConfig(steps=4, batch=16, eval_every=2, warmup=2, val_fraction=0.25)
    run = tmp_path / "run"
    m = FineTuner([demo_dir], run, cfg, init=tiny_onnx, command="pytest").run()
    assert set(m["before"]) == set(m["after"]) and m["before"] != m["after"]
    assert all(np.isfinite(v) for v in [*m["before"].values(), *m["after"].values()])
    for name in ("config.json", "log.csv", "ckpt.pt", "metrics.json", "final.pt"):
        assert (run / name).exists(), name
    again = FineTuner([demo_dir], run, cfg, init=tiny_onnx, command="pytest")
    assert again.step == 4 and again.before == m["before"]  # resumed from ckpt.pt
    with pytest.raises(ValueError, match="other settings"):
        FineTuner([demo_dir], run, FinetuneConfig(steps=8, batch=16), init=tiny_onnx)
    path = export_from_run(run, tmp_path / "export", k=2)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["finetune"]["after"] == m["after"] and meta["finetune"]["ddim_steps"] == 2
    assert meta["output"] == "guidance_residual"
    # and the fine-tuned run is itself a starting point, exact at the same timesteps
    ini = load_init(run)
    assert ini.k == 2 and ini.timesteps == meta["finetune"]["timesteps"]


@pytest.mark.slow
def test_the_shipped_expert_is_read_back_exactly():
    ini = load_init("shipped")
    assert ini.k == 10 and len(ini.timesteps) == 10 and ini.roi is not None
    assert ini.norm.std["guidance"].shape == (10,) and ini.train_config.get("goal_noise") == 0.1
