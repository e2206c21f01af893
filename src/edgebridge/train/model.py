"""The action expert network: DP3-style PointNet encoder + conditional 1-D U-Net denoiser with FiLM,
trained as a DDPM (100 steps) and sampled with few-step DDIM.

One module serves training (:mod:`edgebridge.train.appf`) and export (:mod:`edgebridge.export.expert`);
the runtime never imports it (it runs the exported ONNX graph).

Tensors (B = batch): ``cloud`` (B, N, 3), ``proprio`` (B, 10), ``guidance`` (B, G + 1, 10),
``sample``/``noise`` (B, H, 10). Feature layout: :mod:`edgebridge.runtime.expert.features`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..runtime.expert.features import POSE_DIM


@dataclass(frozen=True)
class ExpertNetConfig:
    """Network sizes and diffusion settings (all stored in checkpoints and the export metadata)."""

    n_points: int = 512
    guidance_tokens: int = 17
    horizon: int = 16
    pose_dim: int = POSE_DIM
    cloud_channels: tuple = (64, 128, 256)
    cloud_feat: int = 128
    obs_feat: int = 256
    step_embed: int = 64
    down_dims: tuple = (64, 128)
    kernel_size: int = 3
    n_groups: int = 8
    train_steps: int = 100
    prediction: str = "sample"
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        if self.prediction not in ("sample", "epsilon"):
            raise ValueError(f"ExpertNetConfig.prediction: expected 'sample' or 'epsilon', got {self.prediction!r}")
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(f"ExpertNetConfig.beta_schedule: expected 'squaredcos_cap_v2' or 'linear', "
                             f"got {self.beta_schedule!r}")
        if self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"ExpertNetConfig.horizon: {self.horizon} must be divisible by "
                             f"2**(len(down_dims)-1) = {2 ** (len(self.down_dims) - 1)}")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"ExpertNetConfig.down_dims: {self.down_dims} must be multiples of n_groups={self.n_groups}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cloud_channels"] = list(self.cloud_channels)
        d["down_dims"] = list(self.down_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExpertNetConfig":
        d = dict(d)
        for k in ("cloud_channels", "down_dims"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------- noise schedule


def betas_for(schedule: str, steps: int) -> torch.Tensor:
    """DDPM betas (float64): Nichol & Dhariwal's cosine schedule capped at 0.999, or linear 1e-4..2e-2."""
    if schedule == "linear":
        return torch.linspace(1e-4, 2e-2, steps, dtype=torch.float64)

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
                        dtype=torch.float64)


def alphas_cumprod(cfg: ExpertNetConfig) -> torch.Tensor:
    return torch.cumprod(1.0 - betas_for(cfg.beta_schedule, cfg.train_steps), dim=0)


def ddim_timesteps(train_steps: int, k: int) -> list[int]:
    """K inference timesteps, "trailing" spacing: K=1 -> [T-1]; K=2 -> [T-1, T/2-1]; ... (descending)."""
    if not 1 <= k <= train_steps:
        raise ValueError(f"DDIM steps K must lie in [1, {train_steps}], got {k}")
    return [int(round(train_steps - i * train_steps / k)) - 1 for i in range(k)]


# --------------------------------------------------------------------------- building blocks


class PointNetEncoder(nn.Module):
    """DP3-style encoder: shared per-point MLP (Linear + LayerNorm + ReLU), max-pool, projection."""

    def __init__(self, channels: tuple, out_dim: int) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Linear(c_in, c), nn.LayerNorm(c), nn.ReLU()]
            c_in = c
        self.mlp = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(c_in, out_dim), nn.LayerNorm(out_dim))

    def forward(self, cloud: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mlp(cloud).max(dim=1).values)


class StepEmbedding(nn.Module):
    """Sinusoidal diffusion-step embedding followed by an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.float()[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(groups, c_out), nn.SiLU())


class CondResBlock(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias from the condition) in between."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.b1 = Conv1dBlock(c_in, c_out, k, groups)
        self.b2 = Conv1dBlock(c_out, c_out, k, groups)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.c_out = c_out

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.b1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.b2(h * (1 + scale) + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion-Policy style 1-D U-Net over the action horizon, conditioned by FiLM."""

    def __init__(self, cfg: ExpertNetConfig, cond_dim: int) -> None:
        super().__init__()
        k, g = cfg.kernel_size, cfg.n_groups
        dims = [cfg.pose_dim, *cfg.down_dims]
        cd = cond_dim + cfg.step_embed
        self.step_embed = StepEmbedding(cfg.step_embed)
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            self.down.append(nn.ModuleList([CondResBlock(a, b, cd, k, g), CondResBlock(b, b, cd, k, g),
                                            nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid = nn.ModuleList([CondResBlock(mid, mid, cd, k, g), CondResBlock(mid, mid, cd, k, g)])
        self.up = nn.ModuleList()
        rev = list(reversed(dims[1:]))
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            self.up.append(nn.ModuleList([CondResBlock(a * 2, b, cd, k, g), CondResBlock(b, b, cd, k, g),
                                          nn.ConvTranspose1d(b, b, 4, 2, 1)]))
        self.final = nn.Sequential(Conv1dBlock(dims[1], dims[1], k, g), nn.Conv1d(dims[1], cfg.pose_dim, 1))

    def forward(self, sample: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.step_embed(t), cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for r1, r2, down in self.down:
            x = r2(r1(x, c), c)
            skips.append(x)
            x = down(x)
        for r in self.mid:
            x = r(x, c)
        for r1, r2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(r2(r1(x, c), c))
        return self.final(x).transpose(1, 2)


# --------------------------------------------------------------------------- the expert


class ActionExpertNet(nn.Module):
    """Observation encoder + denoiser. ``encode`` builds the condition once per chunk; ``denoise`` is
    one network evaluation; :class:`DDIMSampler` unrolls K of them."""

    def __init__(self, cfg: ExpertNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cloud_encoder = PointNetEncoder(cfg.cloud_channels, cfg.cloud_feat)
        self.obs_encoder = nn.Sequential(
            nn.Linear(cfg.pose_dim + cfg.guidance_tokens * cfg.pose_dim, 2 * cfg.obs_feat), nn.SiLU(),
            nn.Linear(2 * cfg.obs_feat, cfg.obs_feat), nn.LayerNorm(cfg.obs_feat))
        self.unet = ConditionalUnet1D(cfg, cfg.cloud_feat + cfg.obs_feat)
        # training only (not in the exported graph): the cloud feature regresses the mean position
        # correction of the chunk, a direct signal for the encoder to find the object (``aux_weight``)
        self.aux_head = nn.Linear(cfg.cloud_feat, 3)
        self.register_buffer("alphas_cumprod", alphas_cumprod(cfg).float(), persistent=False)

    @property
    def cond_dim(self) -> int:
        return self.cfg.cloud_feat + self.cfg.obs_feat

    def encode(self, cloud: torch.Tensor | None, proprio: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Condition vector (B, cloud_feat + obs_feat). ``cloud=None`` zeroes the cloud branch
        (APPF stage 1: action pre-training on trajectories alone)."""
        obs = self.obs_encoder(torch.cat([proprio, guidance.flatten(1)], dim=-1))
        if cloud is None:
            feat = obs.new_zeros(obs.shape[0], self.cfg.cloud_feat)
        else:
            feat = self.cloud_encoder(cloud)
        return torch.cat([feat, obs], dim=-1)

    def denoise(self, sample: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation: the predicted clean sample (or noise, per ``cfg.prediction``)."""
        return self.unet(sample, t, cond)

    def loss(self, cloud: torch.Tensor | None, proprio: torch.Tensor, guidance: torch.Tensor,
             action: torch.Tensor, generator: torch.Generator | None = None, aux_weight: float = 0.0) -> torch.Tensor:
        """DDPM training loss: noise ``action`` at a random step, regress the clean sample or the noise;
        plus ``aux_weight`` x the squared error of ``aux_head`` (cloud feature -> the chunk's mean position
        correction, normalised units) when a cloud is given."""
        b = action.shape[0]
        t = torch.randint(0, self.cfg.train_steps, (b,), device=action.device, generator=generator)
        noise = torch.randn(action.shape, device=action.device, generator=generator)
        return self.loss_at(cloud, proprio, guidance, action, t, noise, aux_weight)

    def loss_at(self, cloud: torch.Tensor | None, proprio: torch.Tensor, guidance: torch.Tensor,
                action: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, aux_weight: float = 0.0) -> torch.Tensor:
        """``loss`` at given diffusion steps ``t`` (B,) and noise (like ``action``)."""
        b = action.shape[0]
        ab = self.alphas_cumprod[t].view(b, 1, 1)
        noisy = ab.sqrt() * action + (1 - ab).sqrt() * noise
        cond = self.encode(cloud, proprio, guidance)
        pred = self.denoise(noisy, t, cond)
        target = action if self.cfg.prediction == "sample" else noise
        loss = torch.mean((pred - target) ** 2)
        if aux_weight > 0 and cloud is not None:
            aux = self.aux_head(cond[:, :self.cfg.cloud_feat])
            loss = loss + aux_weight * torch.mean((aux - action[..., :3].mean(dim=1)) ** 2)
        return loss


def ddim_step(pred: torch.Tensor, sample: torch.Tensor, ab_t: float, ab_prev: float,
              prediction: str) -> torch.Tensor:
    """Deterministic DDIM update (eta = 0) from step t to the previous step."""
    if prediction == "sample":
        x0 = pred
        eps = (sample - math.sqrt(ab_t) * x0) / math.sqrt(1.0 - ab_t)
    else:
        eps = pred
        x0 = (sample - math.sqrt(1.0 - ab_t) * eps) / math.sqrt(ab_t)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps


class DDIMSampler(nn.Module):
    """K DDIM steps unrolled: (cloud, proprio, guidance, noise) -> normalised action (B, H, 10).

    The schedule coefficients are Python constants, so the exported ONNX graph holds K plain copies of
    the denoiser and no control flow; the initial noise is an input, so outputs are reproducible."""

    def __init__(self, net: ActionExpertNet, k: int) -> None:
        super().__init__()
        self.net = net
        self.k = k
        ab = alphas_cumprod(net.cfg).tolist()
        self.timesteps = ddim_timesteps(net.cfg.train_steps, k)
        prev = self.timesteps[1:] + [-1]
        self.coeffs = [(ab[t], ab[p] if p >= 0 else 1.0) for t, p in zip(self.timesteps, prev)]

    def forward(self, cloud: torch.Tensor, proprio: torch.Tensor, guidance: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        cond = self.net.encode(cloud, proprio, guidance)
        x = noise
        for t, (ab_t, ab_prev) in zip(self.timesteps, self.coeffs):
            tt = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
            x = ddim_step(self.net.denoise(x, tt, cond), x, ab_t, ab_prev, self.net.cfg.prediction)
        return x


class EncodeModule(nn.Module):
    """The observation encoder alone (for the per-step export used as a benchmark baseline)."""

    def __init__(self, net: ActionExpertNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, cloud, proprio, guidance):
        return self.net.encode(cloud, proprio, guidance)


class DenoiseModule(nn.Module):
    """One denoiser evaluation with the timestep as an input (the per-step export)."""

    def __init__(self, net: ActionExpertNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, sample, t, cond):
        return self.net.denoise(sample, t, cond)


def count_parameters(module: nn.Module) -> int:
    """Parameters of ``module``; for the expert network those the exported graph uses (not the
    training-only ``aux_head``)."""
    skip = {id(p) for p in module.aux_head.parameters()} if isinstance(module, ActionExpertNet) else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def make_net(cfg: ExpertNetConfig | None = None, seed: int = 0) -> ActionExpertNet:
    torch.manual_seed(seed)
    return ActionExpertNet(cfg or ExpertNetConfig())


__all__ = ["ExpertNetConfig", "ActionExpertNet", "DDIMSampler", "EncodeModule", "DenoiseModule", "ddim_step",
           "ddim_timesteps", "alphas_cumprod", "betas_for", "count_parameters", "make_net"]
