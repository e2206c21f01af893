"""The planner VLM in torch, laid out as llama.cpp runs it: a ViT, a 2-layer MLP projector and a
llama-architecture decoder (the LLaVA-1.5 layout, ``clip.projector_type = "mlp"``).

Every operation matches llama.cpp's graph so the exported GGUF files compute the same function:

- ViT (``clip.cpp``): patch embedding as a strided convolution without bias, learned position
  embeddings (no class token), a pre-LayerNorm, pre-norm blocks with biased attention and a GELU MLP
  (tanh form, as ggml computes it), all blocks used (``clip.vision.feature_layer = [block_count]``).
- Projector: ``mm.0`` -> GELU -> ``mm.2``, both with bias, to the decoder's width.
- Decoder (``llama``): RMSNorm, rotary embeddings on adjacent pairs (llama.cpp's "normal" RoPE, so no
  Q/K permutation at export), SwiGLU, no biases, untied output head. Image embeddings take one
  position each, in sequence, with the causal mask, as llama.cpp decodes a LLaVA image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOCATION_HEADS = ("free", "quadratic")
LOCATION_CENTRE, LOCATION_SCALE = 115.0, 100.0  # t = (n - 115) / 100 spans the numbers -90 .. 319


@dataclass(frozen=True)
class VLMConfig:
    """Sizes of the VLM. ``lm_width`` and ``lm_ff`` are multiples of 256, so every decoder matrix takes
    llama.cpp's K-quants (Q4_K_M) without falling back; ``image_size`` is the square llama.cpp pads the
    ``plan_width`` x ``plan_height`` image to, so its preprocessing needs no resampling."""

    vocab_size: int = 0
    image_size: int = 320
    patch: int = 20
    vit_width: int = 192
    vit_layers: int = 4
    vit_heads: int = 3
    vit_ff: int = 768
    vit_eps: float = 1e-5
    lm_width: int = 256
    lm_layers: int = 3
    lm_heads: int = 4
    lm_ff: int = 768
    rms_eps: float = 1e-5
    rope_base: float = 10000.0
    n_ctx: int = 1024
    plan_width: int = 320
    plan_height: int = 240
    location_head: str = "quadratic"
    location_gain: float = 30.0
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"VLMConfig: image_size {self.image_size} must be a multiple of patch {self.patch}")
        if self.image_size != max(self.plan_width, self.plan_height):
            raise ValueError(f"VLMConfig: image_size {self.image_size} must equal the long side of the "
                             f"{self.plan_width}x{self.plan_height} plan image (llama.cpp then only pads)")
        for w, h, name in ((self.vit_width, self.vit_heads, "vit"), (self.lm_width, self.lm_heads, "lm")):
            if w % h or (w // h) % 2:
                raise ValueError(f"VLMConfig: {name} width {w} must split into {h} heads of even size")
        if self.location_head not in LOCATION_HEADS:
            raise ValueError(f"VLMConfig: location_head {self.location_head!r}; choose one of {LOCATION_HEADS}")
        if self.vit_ff == self.vit_width:
            raise ValueError("VLMConfig: vit_ff equal to vit_width is read by llama.cpp as a legacy swapped "
                             "feed-forward pair; choose another width")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class ViTBlock(nn.Module):
    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        w = c.vit_width
        self.heads = c.vit_heads
        self.ln1 = nn.LayerNorm(w, eps=c.vit_eps)
        self.q, self.k, self.v, self.out = (nn.Linear(w, w) for _ in range(4))
        self.ln2 = nn.LayerNorm(w, eps=c.vit_eps)
        self.up = nn.Linear(w, c.vit_ff)
        self.down = nn.Linear(c.vit_ff, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + self.out(a)
        return x + self.down(gelu(self.up(self.ln2(x))))


class VisionTower(nn.Module):
    """ViT + projector: (B, 3, S, S) normalised image -> (B, n_patches, lm_width) embeddings."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        self.patch_embd = nn.Conv2d(3, c.vit_width, c.patch, stride=c.patch, bias=False)
        self.position_embd = nn.Parameter(torch.randn(c.n_patches, c.vit_width) * 0.02)
        self.pre_ln = nn.LayerNorm(c.vit_width, eps=c.vit_eps)
        self.blocks = nn.ModuleList(ViTBlock(c) for _ in range(c.vit_layers))
        self.mm0 = nn.Linear(c.vit_width, c.lm_width)
        self.mm2 = nn.Linear(c.lm_width, c.lm_width)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embd(img).flatten(2).transpose(1, 2) + self.position_embd
        x = self.pre_ln(x)
        for blk in self.blocks:
            x = blk(x)
        return self.mm2(gelu(self.mm0(x)))


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding on adjacent pairs (llama.cpp ``LLAMA_ROPE_TYPE_NORM``); x: (B, H, T, D)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class LMBlock(nn.Module):
    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        w = c.lm_width
        self.heads, self.base = c.lm_heads, c.rope_base
        self.attn_norm = RMSNorm(w, c.rms_eps)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(w, w, bias=False) for _ in range(4))
        self.ffn_norm = RMSNorm(w, c.rms_eps)
        self.gate = nn.Linear(w, c.lm_ff, bias=False)
        self.up = nn.Linear(w, c.lm_ff, bias=False)
        self.down = nn.Linear(c.lm_ff, w, bias=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        b, t, w = x.shape
        h = self.attn_norm(x)
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        q, k = rope(q, pos, self.base), rope(k, pos, self.base)
        if cache is not None:
            if cache:
                k = torch.cat((cache[0], k), dim=2)
                v = torch.cat((cache[1], v), dim=2)
            cache[:] = [k, v]
        causal = t > 1
        if causal and k.shape[2] != t:  # a multi-token step after a cache: mask by absolute position
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, w))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PlannerVLM(nn.Module):
    """Vision tower + decoder. :meth:`forward` takes a batch of images and token rows with a slot
    where the image embeddings go; :meth:`greedy` decodes with a key/value cache."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        if c.vocab_size <= 0:
            raise ValueError("VLMConfig.vocab_size must be set from the tokenizer")
        self.config = c
        self.vision = VisionTower(c)
        self.token_embd = nn.Embedding(c.vocab_size, c.lm_width)
        self.blocks = nn.ModuleList(LMBlock(c) for _ in range(c.lm_layers))
        self.output_norm = RMSNorm(c.lm_width, c.rms_eps)
        self.output = nn.Linear(c.lm_width, c.vocab_size, bias=False)
        self.apply(self._init)
        # the quadratic location head (see output_weight); loc_t / loc_t2 are zero off the number tokens.
        # A free head has none of these, so checkpoints written before this head load unchanged.
        if c.location_head == "quadratic":
            self.register_buffer("loc_t", torch.zeros(c.vocab_size))
            self.register_buffer("loc_t2", torch.zeros(c.vocab_size))
            self.loc_lin = nn.Parameter(torch.zeros(c.lm_width))
            self.loc_quad = nn.Parameter(torch.zeros(c.lm_width))

    def set_location_tokens(self, ids: dict[int, int]) -> None:
        """Tell the head which token writes which number (``{number: token id}``); nothing for a free head."""
        if self.config.location_head != "quadratic":
            return
        self.loc_t.zero_()
        self.loc_t2.zero_()
        for n, i in ids.items():
            t = (n - LOCATION_CENTRE) / LOCATION_SCALE
            self.loc_t[i], self.loc_t2[i] = t, t * t

    def output_weight(self) -> torch.Tensor:
        """The output head's matrix, as exported (``output.weight``).

        With ``location_head = "quadratic"`` the row of the token that writes the number *n* is a free
        row plus ``gain * (t a + t^2 b)``, t = (n - 115) / 100: the logits over the numbers are then a
        free part plus a parabola in *n* whose peak ``-(a.h) / (2 b.h)`` moves linearly with the hidden
        state *h*. A regression read-out, expressed as an ordinary (untied, f32) output matrix, so
        llama.cpp still only generates tokens; the Gaussian-target loss on the pixel bins is exactly a
        parabola in log space, which this head can fit for any target."""
        w = self.output.weight
        if self.config.location_head != "quadratic":
            return w
        g = self.config.location_gain
        return w + g * (self.loc_t[:, None] * self.loc_lin[None] + self.loc_t2[:, None] * self.loc_quad[None])

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def embed(self, img: torch.Tensor, prefix: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """(B, P + n_patches + R, D): prefix tokens, image embeddings, the remaining tokens."""
        b = img.shape[0]
        pre = self.token_embd(prefix).expand(b, -1, -1) if prefix.dim() == 1 else self.token_embd(prefix)
        return torch.cat((pre, self.vision(img), self.token_embd(rest)), dim=1)

    def decode(self, x: torch.Tensor, start: int = 0, caches: list | None = None,
               at: tuple[torch.Tensor, torch.Tensor] | None = None, hidden: bool = False):
        """Logits of every position, or of the (rows, cols) positions ``at`` only (training); with
        ``hidden`` also the last block's output at every position."""
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        for i, blk in enumerate(self.blocks):
            x = blk(x, pos, None if caches is None else caches[i])
        h = x[at[0], at[1]] if at is not None else x
        logits = F.linear(self.output_norm(h), self.output_weight())
        return (logits, x) if hidden else logits

    def forward(self, img: torch.Tensor, prefix: torch.Tensor, rest: torch.Tensor,
                rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                point: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Logits (of the (rows, cols) positions when given). With ``point`` = (rows, cols) of positions
        that predict a pixel, also their pointing scores over the image tokens: the scaled dot product of
        each position's last hidden state with every image token's, as cosine similarity times 10 (a
        training-only signal, no weights)."""
        at = None if rows is None else (rows, cols)
        if point is None:
            return self.decode(self.embed(img, prefix, rest), at=at)
        logits, h = self.decode(self.embed(img, prefix, rest), at=at, hidden=True)
        p0 = prefix.shape[-1]
        keys = F.normalize(h[point[0], p0:p0 + self.config.n_patches], dim=-1)   # (N, n_patches, D)
        q = F.normalize(h[point[0], point[1]], dim=-1)                           # (N, D)
        return logits, 10.0 * torch.einsum("nkd,nd->nk", keys, q)

    @torch.no_grad()
    def greedy(self, img: torch.Tensor, prefix: torch.Tensor, suffix: torch.Tensor, *, eos: int,
               max_new: int = 96) -> list[int]:
        """Greedy answer tokens for one image (batch 1), without the final ``eos``."""
        caches: list = [[] for _ in self.blocks]
        x = self.embed(img[:1], prefix, suffix[None] if suffix.dim() == 1 else suffix)
        logits = self.decode(x, 0, caches, at=(torch.tensor([0]), torch.tensor([x.shape[1] - 1])))[None]
        pos, out = x.shape[1], []
        for _ in range(max_new):
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            logits = self.decode(self.token_embd(torch.tensor([[nxt]], device=img.device)), pos, caches)
            pos += 1
        return out

    @torch.no_grad()
    def image_embeddings(self, img: torch.Tensor) -> torch.Tensor:
        return self.vision(img)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())

