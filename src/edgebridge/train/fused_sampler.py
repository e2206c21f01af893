"""The K-step DDIM sampler rearranged for export: the same function as :class:`~.model.DDIMSampler`, with
every part that depends only on the (fixed) diffusion step folded into constants, and every shape static.

On a CPU, ONNX Runtime spends most of a chunk on per-node overhead, not arithmetic: the plain export of
``DDIMSampler`` holds ~2700 nodes after ORT's own optimisation, a third of them shape arithmetic. This
module computes the same chunk with about half as many:

* **FiLM split by input.** Each residual block's FiLM is ``Linear(SiLU([step_emb(t); cond]))``. SiLU acts
  elementwise, so the Linear splits into a step part (a constant per DDIM step, computed here at export)
  and a cond part (the same for all K steps). The cond parts of all blocks are one MatMul per chunk;
  per step, one Add of that step's constants (the ``1 +`` of ``1 + scale`` folded in) and one Split.
  The step-embedding MLP leaves the graph.
* **Static-shape GroupNorm.** ``(B, C, T) -> (B, G, C/G*T)``, LayerNormalization without affine, back to
  ``(B, C, T)``, per-channel affine: the reshapes take constant shapes (``-1`` for the batch), so no
  Shape/Gather/Concat chains. ``T`` at each level is known from the horizon.
* **DDIM update folded.** With ``eta = 0`` the update is linear in the sample and the prediction:
  ``x' = p_k x + q_k pred``. ``q_k`` is folded into a per-step copy of the final 1x1 convolution.
* **One layout.** The sample stays ``(B, pose, H)`` for all K steps: two transposes per chunk, not 2K.

``tests/train/test_fused_sampler.py`` checks it against ``DDIMSampler`` in torch; the export's parity check
compares the ONNX graph with ``DDIMSampler`` (the reference), not with this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .model import ActionExpertNet, CondResBlock, Conv1dBlock, DDIMSampler


def ddim_linear_coeffs(ab_t: float, ab_prev: float, prediction: str) -> tuple[float, float]:
    """``(p, q)`` with ``ddim_step(pred, x, ab_t, ab_prev) == p * x + q * pred`` (eta = 0)."""
    if prediction == "sample":  # eps = (x - sqrt(ab_t) x0) / sqrt(1 - ab_t)
        p = math.sqrt(1.0 - ab_prev) / math.sqrt(1.0 - ab_t)
        return p, math.sqrt(ab_prev) - p * math.sqrt(ab_t)
    # x0 = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    p = math.sqrt(ab_prev) / math.sqrt(ab_t)
    return p, math.sqrt(1.0 - ab_prev) - p * math.sqrt(1.0 - ab_t)


def group_norm_static(x: torch.Tensor, gn: nn.GroupNorm, length: int) -> torch.Tensor:
    """``gn(x)`` for ``x`` of shape (B, C, length), exported with constant reshape shapes."""
    c, g = gn.num_channels, gn.num_groups
    k = c // g * length
    y = F.layer_norm(x.reshape(-1, g, k), (k,), eps=gn.eps).reshape(-1, c, length)
    return y * gn.weight[:, None] + gn.bias[:, None]


def conv_block(block: Conv1dBlock, x: torch.Tensor, length: int) -> torch.Tensor:
    conv, gn, act = block
    return act(group_norm_static(conv(x), gn, length))


class FusedDDIMSampler(nn.Module):
    """(cloud, proprio, guidance, noise) -> normalised action (B, H, pose), like ``DDIMSampler(net, k)``.

    The folded constants (FiLM step parts, FiLM cond weights, scaled final convolutions) are computed from
    ``net``'s weights at construction, so they enter an exported graph as plain initializers: build the
    sampler after the weights are final (as :func:`edgebridge.export.expert.export_expert` does)."""

    def __init__(self, net: ActionExpertNet, k: int) -> None:
        super().__init__()
        self.net = net
        self.k = k
        ref = DDIMSampler(net, k)
        self.timesteps = ref.timesteps
        self.coeffs = ref.coeffs
        unet = net.unet
        self.blocks: list[CondResBlock] = [b for level in unet.down for b in level[:2]] + list(unet.mid) + \
                                          [b for level in unet.up for b in level[:2]]
        self.split_sizes = [b.c_out for b in self.blocks for _ in (0, 1)]
        self.step_dim = net.cfg.step_embed
        final = unet.final[1]
        with torch.no_grad():
            self.register_buffer("film_cond_w", self.film_cond_weight(), persistent=False)
            self.register_buffer("film_step", torch.stack([self.film_step_constants(t) for t in self.timesteps]),
                                 persistent=False)
            pq = [ddim_linear_coeffs(a, p, net.cfg.prediction) for a, p in self.coeffs]
            self.update_p = [p for p, _ in pq]
            self.register_buffer("final_w", torch.stack([final.weight * q for _, q in pq]), persistent=False)
            self.register_buffer("final_b", torch.stack([final.bias * q for _, q in pq]), persistent=False)

    def film_cond_weight(self) -> torch.Tensor:
        """All blocks' FiLM weights for the cond part, stacked: (sum 2 C_b, cond_dim)."""
        return torch.cat([b.film[1].weight[:, self.step_dim:] for b in self.blocks], dim=0)

    def film_step_constants(self, t: int) -> torch.Tensor:
        """All blocks' FiLM output from the step part at step ``t``, plus biases, plus 1 on the scales."""
        emb = F.silu(self.net.unet.step_embed(torch.full((1,), t, dtype=torch.int64)))[0]
        parts = []
        for b in self.blocks:
            lin = b.film[1]
            out = lin.weight[:, :self.step_dim] @ emb + lin.bias
            parts.append(out + torch.cat([torch.ones(b.c_out), torch.zeros(b.c_out)]))
        return torch.cat(parts)

    def _block(self, block: CondResBlock, x: torch.Tensor, scale1: torch.Tensor, bias: torch.Tensor,
               length: int) -> torch.Tensor:
        h = conv_block(block.b1, x, length)
        h = conv_block(block.b2, h * scale1 + bias, length)
        return h + block.skip(x)

    def _denoise(self, x: torch.Tensor, film: list[torch.Tensor]) -> torch.Tensor:
        """The U-Net body on (B, pose, H) up to (not including) the final 1x1 convolution."""
        unet = self.net.unet
        length, i, skips = self.net.cfg.horizon, 0, []
        for _, _, down in unet.down:
            for _ in range(2):
                x = self._block(self.blocks[i], x, film[2 * i], film[2 * i + 1], length)
                i += 1
            skips.append(x)
            if not isinstance(down, nn.Identity):
                x, length = down(x), length // 2
        for _ in unet.mid:
            x = self._block(self.blocks[i], x, film[2 * i], film[2 * i + 1], length)
            i += 1
        for _, _, up in unet.up:
            x = torch.cat([x, skips.pop()], dim=1)
            for _ in range(2):
                x = self._block(self.blocks[i], x, film[2 * i], film[2 * i + 1], length)
                i += 1
            x, length = up(x), length * 2
        return conv_block(unet.final[0], x, length)

    def forward(self, cloud: torch.Tensor, proprio: torch.Tensor, guidance: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        cond = self.net.encode(cloud, proprio, guidance)
        film_cond = F.linear(F.silu(cond), self.film_cond_w)
        x = noise.transpose(1, 2)
        for i, p in enumerate(self.update_p):
            film = (film_cond + self.film_step[i]).unsqueeze(-1).split(self.split_sizes, dim=1)
            pred_q = F.conv1d(self._denoise(x, list(film)), self.final_w[i], self.final_b[i])
            x = pred_q if p == 0.0 else pred_q + x * p
        return x.transpose(1, 2)


__all__ = ["FusedDDIMSampler", "ddim_linear_coeffs", "group_norm_static"]
