"""The torch network: shapes, the DDPM schedule, and DDIM against an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.tiny_expert import TINY  # noqa: E402

from edgebridge.train.model import (DDIMSampler, ExpertNetConfig, alphas_cumprod, betas_for,  # noqa: E402
                                    count_parameters, ddim_timesteps, make_net)


def test_shapes_and_default_size():
    net = make_net(ExpertNetConfig(**TINY)).eval()
    b = 3
    cloud, proprio, guidance = torch.randn(b, 512, 3), torch.randn(b, 10), torch.randn(b, 17, 10)
    cond = net.encode(cloud, proprio, guidance)
    assert cond.shape == (b, net.cond_dim)
    out = net.denoise(torch.randn(b, 16, 10), torch.tensor([0, 50, 99]), cond)
    assert out.shape == (b, 16, 10)
    assert net.encode(None, proprio, guidance)[:, :net.cfg.cloud_feat].abs().max() == 0  # stage-1 condition
    full = make_net(ExpertNetConfig())
    n = count_parameters(full)
    assert 1_000_000 < n < 5_000_000, n  # edge-sized: fp32 ONNX well under 20 MB


def test_cosine_schedule_matches_closed_form():
    steps = 100
    ab = alphas_cumprod(ExpertNetConfig(train_steps=steps)).numpy()
    f = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # uncapped steps follow alpha_bar(t) = f(t + 1) / f(0)
    expect = np.array([f(t + 1) / f(0) for t in range(steps)])
    capped = betas_for("squaredcos_cap_v2", steps).numpy() >= 0.999 - 1e-12
    np.testing.assert_allclose(ab[~capped], expect[~capped], rtol=1e-9)
    assert np.all(np.diff(ab) < 0) and 0 < ab[-1] < 1e-3 and ab[0] > 0.999
    lin = betas_for("linear", steps).numpy()
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(2e-2)


def test_ddim_timesteps_trailing():
    assert ddim_timesteps(100, 1) == [99]
    assert ddim_timesteps(100, 2) == [99, 49]
    assert ddim_timesteps(100, 4) == [99, 74, 49, 24]
    assert ddim_timesteps(100, 10) == list(range(99, -1, -10))
    with pytest.raises(ValueError, match="K must"):
        ddim_timesteps(100, 0)


def _reference_ddim(net, k, cloud, proprio, guidance, noise, prediction):
    """DDIM (eta = 0) written from the paper's update, in float64 numpy, calling the network per step."""
    steps = net.cfg.train_steps
    betas = np.array([min(1 - (math.cos(((i + 1) / steps + 0.008) / 1.008 * math.pi / 2) ** 2)
                          / (math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2), 0.999) for i in range(steps)])
    abar = np.cumprod(1 - betas)
    ts = [steps - 1 - i * (steps // k) for i in range(k)]
    cond = net.encode(cloud, proprio, guidance)
    x = noise.numpy().astype(np.float64)
    for i, t in enumerate(ts):
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < k else 1.0
        out = net.denoise(torch.from_numpy(x).float(), torch.full((x.shape[0],), t), cond).numpy().astype(np.float64)
        if prediction == "sample":
            x0, eps = out, (x - np.sqrt(a_t) * out) / np.sqrt(1 - a_t)
        else:
            eps, x0 = out, (x - np.sqrt(1 - a_t) * out) / np.sqrt(a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return x


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
@pytest.mark.parametrize("k", [1, 2, 4, 10])
def test_ddim_sampler_matches_reference(k, prediction):
    net = make_net(ExpertNetConfig(**TINY, prediction=prediction), seed=1).eval()
    g = torch.Generator().manual_seed(k)
    args = (torch.randn(2, 512, 3, generator=g), torch.randn(2, 10, generator=g), torch.randn(2, 17, 10, generator=g),
            torch.randn(2, 16, 10, generator=g))
    with torch.no_grad():
        got = DDIMSampler(net, k)(*args).numpy()
        ref = _reference_ddim(net, k, *args, prediction)
    # epsilon prediction divides by sqrt(alpha_bar) ~ 1e-2 at t = 99, so compare relative to the scale; float32
    # rounding over 10 steps reaches ~1.2e-5 with one torch thread (another summation order): a wrong step is ~1e-2
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert float(np.max(np.abs(got - ref))) <= 5e-5 * scale


def test_k1_sample_prediction_returns_the_network_estimate():
    net = make_net(ExpertNetConfig(**TINY), seed=2).eval()
    args = (torch.randn(1, 512, 3), torch.randn(1, 10), torch.randn(1, 17, 10), torch.randn(1, 16, 10))
    with torch.no_grad():
        direct = net.denoise(args[3], torch.tensor([99]), net.encode(*args[:3]))
        np.testing.assert_allclose(DDIMSampler(net, 1)(*args).numpy(), direct.numpy(), atol=1e-6)


@pytest.mark.slow
def test_loss_falls_when_fitting_one_batch():
    torch.manual_seed(0)
    net = make_net(ExpertNetConfig(**TINY))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    b = (torch.randn(8, 512, 3), torch.randn(8, 10), torch.randn(8, 17, 10), torch.randn(8, 16, 10) * 0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = float(net.loss(*b, generator=torch.Generator().manual_seed(99)))
    for _ in range(40):
        loss = net.loss(*b, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(net.loss(*b, generator=torch.Generator().manual_seed(99))) < 0.5 * first


def test_auxiliary_loss_trains_the_cloud_encoder_only_when_asked():
    net = make_net(ExpertNetConfig(**TINY), seed=4)
    b = (torch.randn(4, 512, 3), torch.randn(4, 10), torch.randn(4, 17, 10), torch.randn(4, 16, 10))
    base = net.loss(*b, generator=torch.Generator().manual_seed(1))
    with_aux = net.loss(*b, generator=torch.Generator().manual_seed(1), aux_weight=1.0)
    aux = torch.mean((net.aux_head(net.cloud_encoder(b[0])) - b[3][..., :3].mean(dim=1)) ** 2)
    torch.testing.assert_close(with_aux, base + aux)
    with_aux.backward()
    assert net.aux_head.weight.grad is not None and net.aux_head.weight.grad.abs().sum() > 0
    net.zero_grad()
    net.loss(None, *b[1:], generator=torch.Generator().manual_seed(1), aux_weight=1.0).backward()  # stage 1
    assert net.aux_head.weight.grad is None or net.aux_head.weight.grad.abs().sum() == 0
