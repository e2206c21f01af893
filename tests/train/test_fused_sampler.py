"""The export-time sampler: the same function as DDIMSampler, with fewer graph nodes."""

from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.export.expert import (INPUTS, OUTPUT, ExportError, example_inputs, export_expert,  # noqa: E402
                                      ort_session)
from edgebridge.runtime.expert.features import Normalizer  # noqa: E402
from edgebridge.train.fused_sampler import FusedDDIMSampler, ddim_linear_coeffs, group_norm_static  # noqa: E402
from edgebridge.train.model import DDIMSampler, ExpertNetConfig, ddim_step, make_net  # noqa: E402

RECORD = {"norm": Normalizer.identity().to_dict()}


def _perturbed(cfg: ExpertNetConfig, seed: int):
    """A network whose norm scales, biases and FiLM weights are all away from their initial 1 / 0."""
    net = make_net(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("k", [1, 2, 4, 10])
def test_fused_sampler_matches_ddim_sampler(k, prediction, schedule):
    net = _perturbed(ExpertNetConfig(**TINY, prediction=prediction, beta_schedule=schedule), seed=k)
    args = example_inputs(net, 3, seed=k)
    with torch.no_grad():
        ref = DDIMSampler(net, k)(*args)
        out = FusedDDIMSampler(net, k)(*args)
    scale = max(1.0, float(ref.abs().max()))  # epsilon prediction at t = 99 amplifies by 1/sqrt(alpha_bar)
    assert float((out - ref).abs().max()) < 1e-5 * scale


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_linear_ddim_coefficients_reproduce_the_update(prediction):
    g = torch.Generator().manual_seed(0)
    x, pred = torch.randn(4, 16, 10, generator=g, dtype=torch.float64), torch.randn(4, 16, 10, generator=g,
                                                                                     dtype=torch.float64)
    for ab_t, ab_prev in ((0.02, 0.3), (0.5, 0.9), (0.9, 1.0)):
        p, q = ddim_linear_coeffs(ab_t, ab_prev, prediction)
        torch.testing.assert_close(p * x + q * pred, ddim_step(pred, x, ab_t, ab_prev, prediction))


def test_static_group_norm_equals_group_norm():
    gn = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(3, 16, 8) * 3 + 1
    torch.testing.assert_close(group_norm_static(x, gn, 8), gn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_fused_export_has_no_shape_arithmetic_and_half_the_nodes(tmp_path):
    net = _perturbed(ExpertNetConfig(**TINY), seed=5)
    fused = export_expert(net, RECORD, tmp_path / "fused", k=4)
    plain = export_expert(net, RECORD, tmp_path / "plain", k=4, graph="plain")
    ops = {p: collections.Counter(n.op_type for n in onnx.load(str(p)).graph.node) for p in (fused, plain)}
    assert not {"Shape", "Gather", "ConstantOfShape", "Sin", "Cos"} & set(ops[fused])
    assert ops[plain]["Shape"] > 0  # the comparison means something: the plain graph has them
    real = {p: sum(n for op, n in c.items() if op not in ("Constant", "Identity")) for p, c in ops.items()}
    assert real[fused] < 0.7 * real[plain], real
    # both graphs compute the reference function, at a batch size other than the exported one
    args = example_inputs(net, 4, seed=9)
    with torch.no_grad():
        ref = DDIMSampler(net, 4)(*args).numpy()
    feeds = {n: a.numpy() for n, a in zip(INPUTS, args)}
    for p in (fused, plain):
        assert np.max(np.abs(ort_session(p).run([OUTPUT], feeds)[0] - ref)) < 1e-4


def test_unknown_graph_kind_is_refused(tmp_path):
    with pytest.raises(ExportError, match="'folded'.*fused, plain"):
        export_expert(make_net(ExpertNetConfig(**TINY)), RECORD, tmp_path, k=1, graph="folded")
