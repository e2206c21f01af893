"""Batch augmentations of APPF training and fine-tuning, on normalised tensors (``appf.py`` explains why):
the consistent plan shift, the arm offset, and fitting recorded clouds to the network's region of interest.
Re-exported by :mod:`edgebridge.train.appf`."""

from __future__ import annotations

import torch

from ..runtime.expert.features import CloudROI, Normalizer


def shift_plan(norm: Normalizer, shift_m: torch.Tensor, cloud: torch.Tensor | None, guidance: torch.Tensor,
               action: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Normalised tensors of a batch as if each sample's plan were moved by ``shift_m`` (B, 3) metres:
    guidance positions (relative to the current pose) +shift, the goal-centred cloud -shift, the target
    correction of every chunk step -shift. Exact for the raw features (a shift commutes with the
    guidance interpolation); only the IK height floor is ignored."""
    def scaled(key: str, dims: slice) -> torch.Tensor:
        return shift_m / torch.as_tensor(norm.std[key][dims], dtype=shift_m.dtype)

    guidance = guidance.clone()
    guidance[..., :3] += scaled("guidance", slice(0, 3))[:, None, :]
    action = action.clone()
    action[..., :3] -= scaled("action", slice(0, 3))[:, None, :]
    if cloud is not None:
        cloud = cloud - scaled("cloud", slice(0, 3))[:, None, :]
    return cloud, guidance, action


def cancelling_plan_shift(norm: Normalizer, action: torch.Tensor) -> torch.Tensor:
    """(B, 3) metres: the plan shift that cancels each sample's demonstrated position correction (its mean
    over the chunk), so that :func:`shift_plan` by it leaves a plan on the real object and a target
    correction of about zero."""
    std = torch.as_tensor(norm.std["action"][:3], dtype=action.dtype)
    mean = torch.as_tensor(norm.mean["action"][:3], dtype=action.dtype)
    return (action[..., :3] * std + mean).mean(dim=1)


def fit_clouds(cloud: torch.Tensor, n_points: int, norm: Normalizer, roi: CloudROI | None) -> torch.Tensor:
    """(B, M, 3) normalised goal-centred clouds as recorded -> (B, N, 3) network clouds: points outside
    ``roi`` (relative to the goal, i.e. the origin) are dropped and the rest resampled to N by an even
    stride / repetition — what ``resample_cloud`` does to a live cloud cropped to the ROI. Demonstrations
    record a margin around the ROI, so after a plan shift the crop is taken afresh and its edges do not
    reveal the shift. A sample with no point inside keeps all of its points."""
    b, m, _ = cloud.shape
    if roi is None:
        if m == n_points:
            return cloud
        mask = torch.ones(b, m, dtype=torch.bool)
    else:
        mean = torch.as_tensor(norm.mean["cloud"], dtype=cloud.dtype)
        std = torch.as_tensor(norm.std["cloud"], dtype=cloud.dtype)
        lo, hi = (torch.as_tensor(v, dtype=cloud.dtype) for v in roi.relative_bounds())
        mask = ((cloud >= (lo - mean) / std) & (cloud <= (hi - mean) / std)).all(dim=-1)
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            mask[empty] = True
    n_valid = mask.sum(dim=1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # inside points first, in order
    idx = (torch.arange(n_points)[None, :] * n_valid[:, None]) // n_points
    src = torch.gather(order, 1, idx)
    return torch.gather(cloud, 1, src[..., None].expand(-1, -1, 3))


def shift_arm(norm: Normalizer, shift_m: torch.Tensor, proprio: torch.Tensor,
              guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised proprio and guidance tokens as if the end effector stood ``shift_m`` (B, 3) metres away
    from where it was (position +shift, guidance relative to it -shift). The target correction and the
    goal-centred cloud do not change (the gripper's own points in the cloud are the one inexactness)."""
    proprio = proprio.clone()
    proprio[:, :3] += shift_m / torch.as_tensor(norm.std["proprio"][:3], dtype=shift_m.dtype)
    guidance = guidance.clone()
    guidance[..., :3] -= (shift_m / torch.as_tensor(norm.std["guidance"][:3], dtype=shift_m.dtype))[:, None, :]
    return proprio, guidance
