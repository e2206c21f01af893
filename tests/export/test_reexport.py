"""Re-export from a plain ONNX graph: the recovered weights are the exported ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.export.expert import INPUTS, OUTPUT, ExportError, example_inputs, export_expert, ort_session  # noqa: E402
from edgebridge.export.reexport import main, recover_net, reexport  # noqa: E402
from edgebridge.runtime.expert.features import Normalizer  # noqa: E402
from edgebridge.train.model import ExpertNetConfig, make_net  # noqa: E402

RECORD = {"norm": Normalizer.identity().to_dict(), "spec": {"action_dt": 0.2}, "command": "make weights",
          "train_config": {"seed": 3}, "metrics": {"val_pos_err_mm": 9.5},
          "extra_metadata": {"make_weights": {"total_s": 12.0}},
    "correction_limit": {"position_m": 0.03, "rotation_rad": 0.2}}


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
    net = make_net(ExpertNetConfig(**TINY), seed=8).eval()
    with torch.no_grad():  # every tensor distinct from a fresh network's
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = export_expert(net, RECORD, tmp_path_factory.mktemp("plain"), k=2, graph="plain")
    return net, path


def test_recovered_weights_are_the_exported_ones(plain_export):
    net, path = plain_export
    got = recover_net(path, json.loads(path.with_suffix(".json").read_text()))
    want = net.state_dict()
    for name, value in got.state_dict().items():
        if not name.startswith("aux_head."):  # training-only, not in the graph
            torch.testing.assert_close(value, want[name], atol=0, rtol=0, msg=name)


@pytest.mark.slow
def test_reexport_to_fused_keeps_function_and_provenance(plain_export, tmp_path):
    net, path = plain_export
    dst = reexport(path, tmp_path, graph="fused")
    meta = json.loads(dst.with_suffix(".json").read_text())
    assert meta["graph"] == "fused" and meta["ddim_steps"] == 2 and meta["action_dt"] == 0.2
    assert meta["training_command"] == "make weights" and meta["metrics"] == {"val_pos_err_mm": 9.5}
    assert meta["data_seed"] == 3 and meta["make_weights"] == {"total_s": 12.0}
    assert meta["correction_limit"] == {"position_m": 0.03, "rotation_rad": 0.2}  # the source's, not the default
    assert meta["reexport"]["max_abs_diff_vs_source"] < 1e-5
    src = json.loads(path.with_suffix(".json").read_text())
    assert meta["reexport"]["source_sha256"] == src["sha256"] != meta["sha256"]
    feeds = {n: a.numpy() for n, a in zip(INPUTS, example_inputs(net, 2, seed=4))}
    a, b = (ort_session(p).run([OUTPUT], feeds)[0] for p in (path, dst))
    assert np.max(np.abs(a - b)) < 1e-5


@pytest.mark.slow
def test_a_fused_graph_cannot_be_a_source(plain_export, tmp_path):
    _, path = plain_export
    fused = reexport(path, tmp_path / "fused")
    with pytest.raises(ExportError, match="'fused' graph cannot be re-exported"):
        reexport(fused, tmp_path / "again")


def test_a_graph_of_another_network_is_refused(plain_export, tmp_path):
    _, path = plain_export
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["model_config"]["cloud_feat"] = 48  # the graph's weights do not fit this config
    with pytest.raises(ExportError, match="not found in the graph"):
        recover_net(path, meta)


def test_cli_reports_a_missing_metadata_file(plain_export, tmp_path, capsys):
    _, path = plain_export
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(path.read_bytes())
    assert main(["--onnx", str(lone), "--out", str(tmp_path / "out")]) == 1
    assert "lone.json: the metadata" in capsys.readouterr().err
