"""APPF training of the action expert (Action Pre-training, Point-cloud Fine-tuning; arXiv 2510.03896).

Stage 1 ("action pre-training") trains the observation encoder and the denoiser on trajectories alone:
the cloud branch is zeroed, so the batch can be large and the steps cheap. Stage 2 ("point-cloud
fine-tuning") adds the PointNet cloud encoder and fine-tunes everything with clouds. In both stages the
guidance and goal tokens get Gaussian noise (``goal_noise``, in normalised units) so the expert learns
to correct an imprecise plan instead of copying it.

``aux_weight`` adds an auxiliary loss in stage 2: a linear head on the cloud feature regresses the chunk's
mean position correction, a direct gradient for the encoder to localise the object (the head is not
exported).

``plan_shift_m`` adds a second, *consistent* augmentation: each sample's whole plan is moved by a random
3-D offset (Gaussian, std ``plan_shift_m`` per axis) as if the planner had missed by that much, and
everything that depends on the plan moves with it — the guidance tokens by +offset, the goal-centred
cloud by -offset, the target correction by -offset (the demonstrator still goes to the real object). A
data set of a few dozen episodes holds only a few dozen plan errors; with the shift every batch shows
new ones, and the only way to predict the correction is to find the object in the cloud.
``clean_plan_fraction`` of the samples get instead the shift that cancels their demonstrated correction
(its chunk mean): a plan that is already right, whose target correction is about zero — what the
expert sees when the planner is accurate.

``arm_shift_m`` breaks a shortcut: the demonstrator's arm follows the *true* path, so in the data the arm's
offset from the (noisy) guidance *is* the correction, and a network that reads it off the proprio and
relative-guidance tokens copies its own last correction in closed loop and drifts (measured: 4-5 cm
corrections on clean plans). The augmentation moves the arm by a random offset (proprio +offset, relative
guidance -offset) and leaves the target alone — the demonstrated chunk does not depend on where the arm
is — so that offset carries no information about the correction.

A run directory holds ``config.json``, ``norm.json``, ``log.csv`` / ``log.json`` (loss curves),
``curves.png``, ``ckpt.pt`` (latest, for resuming), ``final.pt`` (EMA weights + everything export needs)
and ``metrics.json``. Rerunning on the same directory resumes where it stopped.

:class:`Trainer` runs alone or under ``torchrun --nproc-per-node N`` (DDP, ``train/distributed.py``;
``python -m edgebridge.train.appf_run`` is the entry point): the stage batches are global, split over the
ranks; rank 0 alone keeps the EMA, evaluates and writes the run directory. The final record holds each
stage's wall time, the world size and the device's name.

Checkpoints hold tensors and plain JSON types only (configs as dicts, never pickled objects) and are read
with :func:`load_checkpoint` (``train/checkpoints.py``; ``torch.load(weights_only=True)``): a file holding
anything else, such as a pickled object that would run code when loaded, is refused with a
:class:`CheckpointError` naming it. The settings, :class:`TrainConfig` and :class:`StageConfig`, are in
``train/appf_config.py``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..runtime.expert.features import OUTPUT_RESIDUAL, CloudROI, FeatureSpec, Normalizer
from . import distributed as ddp
from .appf_config import StageConfig, TrainConfig
from .augment import cancelling_plan_shift, fit_clouds, shift_arm, shift_plan  # noqa: F401 - re-exported
from .checkpoints import CheckpointError, load_checkpoint, plain  # noqa: F401 - re-exported
from .data import DemoSet, load_demos, read_meta, spec_from_meta
from .model import ActionExpertNet, DDIMSampler, ExpertNetConfig, count_parameters, make_net

log = logging.getLogger(__name__)


def _check_device(device: str) -> str:
    """``device`` as torch spells it, after checking that torch can use it."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"training device {device!r}: use 'cpu' or 'cuda[:N]' ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training device {device!r}: torch {torch.__version__} sees no CUDA GPU; "
                           "train with --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"training device {device!r}: use 'cpu' or 'cuda[:N]'")
    return str(dev)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


class _Tensors:
    """Normalised training tensors (torch, float32) of one split."""

    def __init__(self, ds: DemoSet, norm: Normalizer) -> None:
        self.cloud = torch.from_numpy(norm.normalize("cloud", ds.cloud))
        self.proprio = torch.from_numpy(norm.normalize("proprio", ds.proprio))
        self.guidance = torch.from_numpy(norm.normalize("guidance", ds.guidance))
        self.action = torch.from_numpy(norm.normalize("action", ds.action))

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def batch(self, idx: np.ndarray, use_cloud: bool):
        i = torch.from_numpy(idx)
        return (self.cloud[i] if use_cloud else None), self.proprio[i], self.guidance[i], self.action[i]


@torch.no_grad()
def evaluate(net: ActionExpertNet, data: _Tensors, norm: Normalizer, *, use_cloud: bool, k: int,
             seed: int, max_samples: int = 256, fit_cloud=None, device: str = "cpu") -> dict:
    """Denoising loss (fixed noise) and DDIM-K sampling error in metres / gripper units: from sampled
    initial noise (``pos_err_mm``) and from zero initial noise as the runtime samples (``pos_err_zero_mm``)."""
    net.eval()
    g = torch.Generator().manual_seed(seed)
    n = min(len(data), max_samples)
    idx = np.linspace(0, len(data) - 1, n).astype(np.int64)
    cloud, proprio, guidance, action = data.batch(idx, use_cloud)
    if cloud is not None and fit_cloud is not None:
        cloud = fit_cloud(cloud)
    t = torch.randint(0, net.cfg.train_steps, (action.shape[0],), generator=g)
    noise = torch.randn(action.shape, generator=g)
    cloud, proprio, guidance, action_d = _to(device, cloud, proprio, guidance, action)
    loss = float(net.loss_at(cloud, proprio, guidance, action_d, t.to(device), noise.to(device)))
    sampler = DDIMSampler(net, k)  # cloud None: stage-1 condition
    pred = sampler(cloud, proprio, guidance, torch.randn(action.shape, generator=g).to(device)).cpu()
    pred0 = sampler(cloud, proprio, guidance, torch.zeros(action.shape, device=device)).cpu()
    a = norm.unnormalize("action", action.numpy())

    p, p0 = (norm.unnormalize("action", x.numpy()) for x in (pred, pred0))
    err, err0 = (np.linalg.norm(x[..., :3] - a[..., :3], axis=-1) for x in (p, p0))
    net.train()
    # the output is a correction of the guidance: a zero correction is the plain-IK executor
    return {"loss": loss, "pos_err_mm": float(err.mean() * 1e3), "pos_err_zero_mm": float(err0.mean() * 1e3),
            "ik_pos_err_mm": float(np.linalg.norm(a[..., :3], axis=-1).mean() * 1e3),
            "pos_err_first_mm": float(err[:, 0].mean() * 1e3),
            "gripper_err": float(np.abs(p[..., 9] - a[..., 9]).mean())}


def _to(device: str, *tensors: torch.Tensor | None) -> tuple:
    if device == "cpu":
        return tensors
    return tuple(None if x is None else x.to(device, non_blocking=True) for x in tensors)


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plot extra missing
        log.warning("matplotlib not installed; %s not written (pip install 'edgebridge[plot]')", path)
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage in (1, 2):
        r = [x for x in rows if x["stage"] == stage]
        if not r:
            continue
        ax[0].plot([x["global_step"] for x in r], [x["loss"] for x in r], label=f"stage {stage} train", lw=0.8)
        v = [x for x in r if x.get("val_loss") not in (None, "")]
        if v:
            ax[0].plot([x["global_step"] for x in v], [float(x["val_loss"]) for x in v], "o-", label=f"stage {stage} val")
            ax[1].plot([x["global_step"] for x in v], [float(x["val_pos_err_mm"]) for x in v], "o-", label=f"stage {stage}")
    ax[0].set_yscale("log"); ax[0].set_xlabel("step"); ax[0].set_ylabel("denoising MSE"); ax[0].legend()
    ax[1].set_xlabel("step"); ax[1].set_ylabel("DDIM position error (mm)"); ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


RESUME_KEYS = ("stage", "step", "net", "ema", "opt", "rows", "rng", "gen", "elapsed", "config")


class Trainer:
    """Runs both APPF stages in ``run_dir``, resuming from ``ckpt.pt`` when present.

    Alone (the default), or as one of N processes under ``torchrun --nproc-per-node N`` (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment): then it joins the process group (gloo on the CPU,
    nccl on CUDA, where a plain ``cuda`` device becomes ``cuda:LOCAL_RANK``), trains the network wrapped in
    DistributedDataParallel and destroys the group at the end of :meth:`run` (when it created it; one such
    run per process).

    A stage's ``batch`` is the *global* batch: each rank draws ``batch // world_size`` samples with its own
    generators (seeded from ``cfg.seed`` and its rank; alone, from ``cfg.seed`` as always) and DDP averages
    the gradients. On the CPU ``cfg.threads`` are shared out too (``threads // world_size`` each, at least
    1). Rank 0 alone keeps the EMA, evaluates and writes the run directory (checkpoints, logs, curves,
    ``final.pt``) while the others wait at a barrier. A checkpoint holds every rank's generator
    states, so a run resumes exactly under the same world size (under another, each rank draws afresh).
    :meth:`run` returns the metrics on rank 0 and ``{}`` on the other ranks."""

    def __init__(self, demo_dirs: list[Path], run_dir: Path, cfg: TrainConfig, spec: FeatureSpec | None = None,
                 command: str = "", device: str = "cpu") -> None:
        self.run_dir = Path(run_dir)
        self.device = ddp.local_device(_check_device(device))
        self.owns_group = ddp.init_from_env(self.device)
        self.rank, self.world = ddp.rank_world()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        # cfg.threads are the run's: on the CPU each of the processes takes its share
        torch.set_num_threads(max(1, cfg.threads // self.world) if self.device == "cpu" else cfg.threads)
        if spec is None:  # sizes from the data; the cloud size is the network's (recorded clouds are fitted to it)
            spec = replace(spec_from_meta(read_meta(Path(list(demo_dirs)[0]))), n_points=cfg.model.n_points)
        ds = load_demos(demo_dirs, spec)
        self.spec = FeatureSpec(**ds.meta["spec"])
        self.roi = CloudROI.from_dict(ds.meta.get("cloud_roi"))
        if (self.spec.n_points, self.spec.guidance_tokens, self.spec.horizon) != \
                (cfg.model.n_points, cfg.model.guidance_tokens, cfg.model.horizon):
            raise ValueError(f"demonstrations have N={self.spec.n_points}, G+1={self.spec.guidance_tokens}, "
                             f"H={self.spec.horizon} but the model config expects N={cfg.model.n_points}, "
                             f"G+1={cfg.model.guidance_tokens}, H={cfg.model.horizon}")
        for st in (cfg.stage1, cfg.stage2):
            ddp.shard_batch(st.batch, self.world)  # refuses a batch smaller than the world before any step
        train_ds, val_ds = ds.split(cfg.val_fraction, cfg.seed)
        self.norm = train_ds.fit_normalizer()
        self.train_data = _Tensors(train_ds, self.norm)
        self.fit_cloud = lambda c: fit_clouds(c, cfg.model.n_points, self.norm, self.roi)
        self.val_data = _Tensors(val_ds if len(val_ds) else train_ds, self.norm)
        self.data_meta = {**ds.meta, "train_samples": len(train_ds), "val_samples": len(val_ds)}
        self.command = command
        if self.rank == 0:
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            (self.run_dir / "norm.json").write_text(json.dumps(self.norm.to_dict()))
        self.net = make_net(cfg.model, cfg.seed).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.rank == 0 else None
        if self.rank == 0:
            log.info("action expert: %d parameters (cloud encoder %d, denoiser %d); world size %d",
                     count_parameters(self.net), count_parameters(self.net.cloud_encoder),
                     count_parameters(self.net.unet), self.world)
        self.rows: list[dict] = []
        self.stage, self.step = 1, 0
        self._seed_generators(ddp.rank_seed(cfg.seed, self.rank, self.world))
        self.elapsed = 0.0
        self.stage_wall = [0.0, 0.0]  # wall seconds of stage 1 and 2, evaluations and checkpoints included
        self.opt = self._make_opt(cfg.stage1)
        self._resume()
        # the network's loss; under DDP the same call goes through DistributedDataParallel (gradient averaging)
        self.loss_fn = self.net.loss if self.world == 1 else ddp.ddp_method(self.net, "loss", self.device)

    def _make_opt(self, st: StageConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=st.lr, weight_decay=self.cfg.weight_decay)

    def _seed_generators(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        # the diffusion step and noise of the loss are drawn where the network runs
        self.loss_gen = self.gen if self.device == "cpu" else torch.Generator(self.device).manual_seed(seed)

    # ------------------------------------------------------------------ checkpoints

    def _generator_state(self) -> dict:
        return {"rng": plain(self.rng.bit_generator.state), "gen": self.gen.get_state(),
                "loss_gen": None if self.loss_gen is self.gen else self.loss_gen.get_state()}

    def _set_generator_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"].cpu())
        if self.loss_gen is not self.gen and state.get("loss_gen") is not None:
            self.loss_gen.set_state(state["loss_gen"].cpu())

    def _save(self, name: str = "ckpt.pt") -> None:
        """Collective under DDP: every rank's generator states go to rank 0, which writes; the others wait."""
        generators = ddp.gather(self._generator_state())
        if self.rank == 0:
            state = {"stage": self.stage, "step": self.step, "net": self.net.state_dict(),
                     "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "rows": plain(self.rows),
                     **generators[0], "elapsed": float(self.elapsed), "world_size": self.world,
                     "stage_wall_s": [float(t) for t in self.stage_wall], "config": plain(self.cfg.to_dict())}
            if self.world > 1:
                state["ranks"] = generators
            tmp = self.run_dir / (name + ".tmp")
            torch.save(state, tmp)
            tmp.replace(self.run_dir / name)
        ddp.barrier()

    def _resume(self) -> None:
        path = self.run_dir / "ckpt.pt"
        if not path.exists():
            return
        state = load_checkpoint(path, RESUME_KEYS, map_location=self.device)
        if state["config"] != plain(self.cfg.to_dict()):
            raise ValueError(f"{path}: was written with a different training config; use a new run directory "
                             "or delete the checkpoint to start over")
        self.net.load_state_dict(state["net"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.stage, self.step, self.rows, self.elapsed = state["stage"], state["step"], state["rows"], state["elapsed"]
        self.stage_wall = [float(t) for t in state.get("stage_wall_s", (0.0, 0.0))]
        self.opt = self._make_opt(self.cfg.stage1 if self.stage == 1 else self.cfg.stage2)
        self.opt.load_state_dict(state["opt"])
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.world:
            self._set_generator_state(state["ranks"][self.rank] if self.world > 1 else state)
        else:
            self._seed_generators(int(np.random.SeedSequence([self.cfg.seed, self.rank, self.stage, self.step])
                                      .generate_state(1, np.uint32)[0]))
            if self.rank == 0:
                log.warning("%s was written by %d process(es), this run has %d: each rank draws its batches "
                            "afresh from here on", path, saved_world, self.world)
        if self.rank == 0:
            log.info("resumed %s at stage %d step %d", path, self.stage, self.step)

    # ------------------------------------------------------------------ loop

    @torch.no_grad()
    def _ema_update(self) -> None:
        if self.ema is None:  # rank 0 alone keeps the EMA
            return
        d = self.cfg.ema_decay
        for pe, p in zip(self.ema.parameters(), self.net.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)

    def _write_logs(self) -> None:
        keys = ["stage", "step", "global_step", "loss", "lr", "val_loss", "val_pos_err_mm", "val_pos_err_zero_mm",
                "val_gripper_err", "time_s"]
        with open(self.run_dir / "log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        (self.run_dir / "log.json").write_text(json.dumps(self.rows))
        _plot(self.rows, self.run_dir / "curves.png")

    def _run_stage(self, stage: int, st: StageConfig) -> None:
        offset = 0 if stage == 1 else self.cfg.stage1.steps
        n = ddp.shard_batch(st.batch, self.world)  # this rank's share of the global batch
        t_last = t_wall = time.monotonic()
        self.net.train()
        while self.step < st.steps:
            lr = _lr(self.step, st.steps, st.lr, self.cfg.warmup)
            for g in self.opt.param_groups:
                g["lr"] = lr
            idx = self.rng.integers(0, len(self.train_data), n)
            cloud, proprio, guidance, action = self.train_data.batch(idx, st.use_cloud)
            if self.cfg.plan_shift_m > 0:
                shift = self.cfg.plan_shift_m * torch.randn((n, 3), generator=self.gen)
                if self.cfg.clean_plan_fraction > 0:
                    clean = torch.rand(n, generator=self.gen) < self.cfg.clean_plan_fraction
                    shift = torch.where(clean[:, None], cancelling_plan_shift(self.norm, action), shift)
                cloud, guidance, action = shift_plan(self.norm, shift, cloud, guidance, action)
            if self.cfg.arm_shift_m > 0:
                shift = self.cfg.arm_shift_m * torch.randn((n, 3), generator=self.gen)
                proprio, guidance = shift_arm(self.norm, shift, proprio, guidance)
            if cloud is not None:
                cloud = self.fit_cloud(cloud)
            if self.cfg.goal_noise > 0:
                guidance = guidance + self.cfg.goal_noise * torch.randn(guidance.shape, generator=self.gen)
            cloud, proprio, guidance, action = _to(self.device, cloud, proprio, guidance, action)
            loss = self.loss_fn(cloud, proprio, guidance, action, generator=self.loss_gen,
                                aux_weight=self.cfg.aux_weight)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
            self._ema_update()
            self.step += 1
            now = time.monotonic()
            self.elapsed += now - t_last
            t_last = now
            row = {"stage": stage, "step": self.step, "global_step": offset + self.step,
                   "loss": ddp.mean_over_ranks(loss), "lr": lr, "time_s": round(self.elapsed, 2)}
            if self.rank == 0 and (self.step % self.cfg.eval_every == 0 or self.step == st.steps):
                m = evaluate(self.ema, self.val_data, self.norm, use_cloud=st.use_cloud, k=self.cfg.eval_k,
                             seed=self.cfg.seed + 1, fit_cloud=self.fit_cloud, device=self.device)
                row.update(val_loss=m["loss"], val_pos_err_mm=m["pos_err_mm"], val_pos_err_zero_mm=m["pos_err_zero_mm"],
                           val_gripper_err=m["gripper_err"])
                log.info("stage %d step %d/%d loss %.4f val %.4f pos err %.1f mm, from zero noise %.1f mm "
                         "(guidance alone %.1f mm) (%.0f s)", stage, self.step, st.steps, row["loss"], m["loss"],
                         m["pos_err_mm"], m["pos_err_zero_mm"], m["ik_pos_err_mm"], self.elapsed)
            self.rows.append(row)
            if self.step % self.cfg.ckpt_every == 0 or self.step == st.steps:
                self.stage_wall[stage - 1] += time.monotonic() - t_wall
                t_wall = time.monotonic()
                self._save()
                if self.rank == 0:
                    self._write_logs()
            t_last = time.monotonic()
        self.stage_wall[stage - 1] += time.monotonic() - t_wall

    def run(self) -> dict:
        """Both stages from where the run stopped; the metrics on rank 0, ``{}`` on the other ranks."""
        try:
            if self.stage == 1:
                self._run_stage(1, self.cfg.stage1)
                self.stage, self.step = 2, 0
                self.opt = self._make_opt(self.cfg.stage2)
                self._save()
            self._run_stage(2, self.cfg.stage2)
            metrics = self._finish() if self.rank == 0 else {}
            ddp.barrier()  # final.pt is written when run() returns, on every rank
            return metrics
        finally:
            if self.owns_group:
                ddp.destroy()
                self.owns_group = False

    def _finish(self) -> dict:
        self._write_logs()
        metrics = {f"val_{k}": v for k, v in evaluate(self.ema, self.val_data, self.norm, use_cloud=True,
                                                      k=self.cfg.eval_k, seed=self.cfg.seed + 1,
                                                      fit_cloud=self.fit_cloud, device=self.device).items()}
        metrics.update(train_time_s=round(self.elapsed, 1), stage1_wall_s=round(self.stage_wall[0], 1),
                       stage2_wall_s=round(self.stage_wall[1], 1), world_size=self.world, train_device=self.device,
                       train_device_name=ddp.device_name(self.device), parameters=count_parameters(self.net),
                       eval_k=self.cfg.eval_k)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        ema_cpu = {k: v.cpu() for k, v in self.ema.state_dict().items()}
        record = plain({"model_config": self.cfg.model.to_dict(), "norm": self.norm.to_dict(),
                        "spec": asdict(self.spec), "metrics": metrics, "train_config": self.cfg.to_dict(),
                        "data": self.data_meta, "command": self.command, "output": OUTPUT_RESIDUAL})
        torch.save({**record, "ema": ema_cpu}, self.run_dir / "final.pt")
        log.info("training done: %s", metrics)
        return metrics


def load_final(run_dir: Path) -> tuple[ActionExpertNet, dict]:
    """The trained (EMA) network and its record from ``run_dir/final.pt``."""
    path = Path(run_dir) / "final.pt"
    try:
        rec = load_checkpoint(path, ("model_config", "ema"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no finished training run here; run `python -m edgebridge.train "
                                f"--run {run_dir} ...` first") from e
    net = ActionExpertNet(ExpertNetConfig.from_dict(rec["model_config"]))
    net.load_state_dict(rec["ema"])
    return net.eval(), rec
