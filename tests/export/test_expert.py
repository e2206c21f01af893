"""ONNX export: K unrolled DDIM steps in one graph, parity with torch, metadata, variants."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.export.expert import (ExportError, OPSET, example_inputs, export_expert,  # noqa: E402
                                      export_step_graphs, ort_session, parity_check)
from edgebridge.runtime.expert.features import Normalizer  # noqa: E402
from edgebridge.train.model import DDIMSampler, ExpertNetConfig, make_net  # noqa: E402

RECORD = {"norm": Normalizer.identity().to_dict(), "spec": {"action_dt": 0.1}, "command": "test",
          "train_config": {"seed": 7}, "metrics": {"val_pos_err_mm": 1.0}}


@pytest.mark.parametrize("k", [4])
def test_export_parity_dynamic_batch_and_metadata(tmp_path, k):
    net = make_net(ExpertNetConfig(**TINY), seed=3)
    path = export_expert(net, RECORD, tmp_path, k=k)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == OPSET >= 17
    assert [i.name for i in model.graph.input] == ["cloud", "proprio", "guidance", "noise"]
    assert not (tmp_path / "expert.onnx.data").exists()  # one file, weights inside
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["ddim_steps"] == k and meta["parity"]["max_abs_diff"] < 1e-4
    assert meta["data_seed"] == 7 and meta["training_command"] == "test" and meta["horizon"] == 16
    # batch 5 (exported with batch 1) agrees with torch, and the same noise gives the same output
    args = example_inputs(net, 5, seed=11)
    sess = ort_session(path)
    feeds = {n: a.numpy() for n, a in zip(["cloud", "proprio", "guidance", "noise"], args)}
    out = sess.run(["action"], feeds)[0]
    with torch.no_grad():
        ref = DDIMSampler(net.eval(), k)(*args).numpy()
    assert out.shape == (5, 16, 10)
    assert np.max(np.abs(out - ref)) < 1e-4
    np.testing.assert_array_equal(out, sess.run(["action"], feeds)[0])


@pytest.mark.slow
def test_unrolled_graph_shares_weights_across_steps(tmp_path):
    net = make_net(ExpertNetConfig(**TINY))
    one = export_expert(net, RECORD, tmp_path / "k1", k=1).stat().st_size
    three = export_expert(net, RECORD, tmp_path / "k3", k=3).stat().st_size
    weight_bytes = 4 * sum(p.numel() for p in net.parameters())
    # two more denoiser copies add graph nodes, not two more copies of the weights
    assert three - one < 0.5 * 2 * weight_bytes, (one, three, weight_bytes)


def test_parity_check_catches_a_wrong_graph(tmp_path):
    net = make_net(ExpertNetConfig(**TINY), seed=1)
    path = export_expert(net, RECORD, tmp_path, k=2)
    other = DDIMSampler(make_net(ExpertNetConfig(**TINY), seed=2).eval(), 2)
    with pytest.raises(ExportError, match="differs from torch"):
        parity_check(other, path)


def test_variants_report_their_error(tmp_path):
    net = make_net(ExpertNetConfig(**TINY), seed=4)
    path = export_expert(net, RECORD, tmp_path, k=2, fp16=True, int8=True)
    meta = json.loads(path.with_suffix(".json").read_text())
    for name in ("fp16", "int8"):
        v = meta["variants"][name]
        if v["file"] is None:
            pytest.fail(f"{name} variant failed: {v['error']}")
        assert (tmp_path / v["file"]).exists()
        assert 0 < v["max_abs_err"] < 5.0  # measured, not assumed: lossy but bounded


def test_export_needs_normalisation_stats(tmp_path):
    with pytest.raises(ExportError, match="normalisation"):
        export_expert(make_net(ExpertNetConfig(**TINY)), {}, tmp_path, k=1)


def test_step_graphs_compose_to_the_unrolled_result(tmp_path):
    net = make_net(ExpertNetConfig(**TINY), seed=5).eval()
    enc, den = export_step_graphs(net, tmp_path)
    cloud, proprio, guidance, noise = (a.numpy() for a in example_inputs(net, 1, seed=3))
    s_enc, s_den = ort_session(enc), ort_session(den)
    cond = s_enc.run(None, {"cloud": cloud, "proprio": proprio, "guidance": guidance})[0]
    sampler = DDIMSampler(net, 2)
    x = noise
    for t, (ab_t, ab_prev) in zip(sampler.timesteps, sampler.coeffs):
        pred = s_den.run(None, {"sample": x, "t": np.array([t], np.int64), "cond": cond})[0]
        x = np.sqrt(ab_prev) * pred + np.sqrt(1 - ab_prev) * (x - np.sqrt(ab_t) * pred) / np.sqrt(1 - ab_t)
        x = x.astype(np.float32)
    with torch.no_grad():
        ref = sampler(*(torch.from_numpy(a) for a in (cloud, proprio, guidance, noise))).numpy()
    assert np.max(np.abs(x - ref)) < 1e-4


def test_cli_exports_a_run(tiny_run, tmp_path, capsys):
    from edgebridge.export.cli import main

    assert main(["expert", "--run", str(tiny_run), "--out", str(tmp_path), "--k", "2"]) == 0
    assert "parity max abs diff" in capsys.readouterr().out
    assert (tmp_path / "expert.onnx").exists() and (tmp_path / "expert.json").exists()


def test_cli_without_a_finished_run_names_the_file_and_exits_2(tmp_path, capsys):
    from edgebridge.export.cli import main

    assert main(["expert", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nothing/final.pt: no finished training run here" in err and "python -m edgebridge.train" in err
