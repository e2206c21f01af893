"""Fine-tune a trained action expert on recorded demonstrations (``python -m edgebridge.train --from-dataset
DIR --init shipped``): the owner of an arm teaches the expert their own scene from teleoperated episodes.

**Where the weights come from** (``--init``). ``shipped``: the ONNX graph in ``assets/expert`` (no torch
checkpoint ships); another ``.onnx`` export; or a training run directory (its ``final.pt``). An export's
weights are read back from the graph: a probe network of the same config with distinct random weights is
exported the same way (same torch exporter, same graph kind), every weight is found among the probe
graph's tensors by value (as is, or transposed), and the tensor of the same name is read from the
export. A *fused* graph (``train/fused_sampler.py``) holds the FiLM weights of the condition as they are,
the final convolution scaled per DDIM step, and the step-embedding MLP only as its output at the graph's
K timesteps (folded with the FiLM step weights and biases): those are rebuilt exactly at those K
timesteps (a fresh step MLP, and FiLM step weights and biases solved by least squares, minimum norm).
The recovered network must reproduce the export's outputs (``RECOVERY_TOL``), or the load fails.
A network recovered from a fused graph is fine-tuned at its K timesteps only, the ones its K-step
sampler uses: export it again with the same K (``edge-export expert --run RUN --k K``, K = 10 for the
shipped expert).

**Data.** The demonstrations are read with ``load_demos(dirs, hindsight=Hindsight(...))``: a teleoperated
episode without guidance gets it in hindsight from its gripper events, with the paper's goal noise
(``train/hindsight.py``) in the expert's own normalised units. The expert's normalisation, cloud region of
interest and feature sizes are kept (the weights depend on them); episodes split into training and
validation (``val_fraction``, by episode).

**Training** is APPF's stage 2 from the initial weights (clouds on, the goal noise, plan-shift and
arm-shift augmentations as the expert was trained with; ``appf``'s public functions), AdamW, cosine
schedule, EMA weights. The validation error (``appf.evaluate``: DDIM-K position error from zero initial
noise as the runtime samples, from sampled noise, the guidance alone; gripper error) is measured before
the first step and after the last. The run directory holds ``config.json``, ``log.csv``, ``ckpt.pt``
(resumed when present), ``metrics.json`` (``before`` / ``after``) and ``final.pt``, which
``edge-export expert --run`` exports like any training run.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..runtime.expert.features import OUTPUT_RESIDUAL, CloudROI, FeatureSpec, Normalizer
from .appf import evaluate, fit_clouds, load_checkpoint, load_final, plain, shift_arm, shift_plan
from .data import DemoError, load_demos, read_meta
from .hindsight import Hindsight, HindsightConfig
from .model import ActionExpertNet, DDIMSampler, ExpertNetConfig, count_parameters, make_net

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "expert"
INPUTS = ("cloud", "proprio", "guidance", "noise")
RECOVERY_TOL = 1e-4  # the recovered network against the export it came from (max abs difference)


class InitError(ValueError):
    """The initial weights cannot be loaded: the file is missing, or its weights cannot be recovered."""


# --------------------------------------------------------------------------- initial weights


@dataclass
class Init:
    """Initial weights and what they depend on. ``timesteps``: the diffusion steps the weights are exact
    at (None: all of them)."""

    net: ActionExpertNet
    norm: Normalizer
    spec: FeatureSpec
    k: int
    roi: CloudROI | None
    train_config: dict
    correction_limit: dict | None
    data: dict
    source: str
    timesteps: list[int] | None = None


def graph_tensors(path: Path) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of an ONNX file, by name (also used by export.reexport)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _export_probe(module: torch.nn.Module, cfg: ExpertNetConfig, path: Path, opset: int) -> None:
    """The probe exported as ``edge-export expert`` exports (export/expert.py ``_export``)."""
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, cfg.n_points, 3, generator=g), torch.randn(1, cfg.pose_dim, generator=g),
            torch.randn(1, cfg.guidance_tokens, cfg.pose_dim, generator=g),
            torch.randn(1, cfg.horizon, cfg.pose_dim, generator=g))
    names = list(INPUTS) + ["action"]
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=list(INPUTS),
                      output_names=["action"], dynamic_axes={n: {0: "batch"} for n in names}, do_constant_folding=True)


def _outputs(path: Path, net: ActionExpertNet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime on ``path``, the torch K-step sampler of ``net``) on seeded inputs."""
    import onnxruntime as ort

    c = net.cfg
    g = torch.Generator().manual_seed(7)
    args = (torch.randn(3, c.n_points, 3, generator=g), torch.randn(3, c.pose_dim, generator=g),
            torch.randn(3, c.guidance_tokens, c.pose_dim, generator=g), torch.randn(3, c.horizon, c.pose_dim, generator=g))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["action"], {n: a.numpy() for n, a in zip(INPUTS, args)})[0]
    with torch.no_grad():
        ref = DDIMSampler(net.eval(), k)(*args).numpy()
    return out, ref


def recover_onnx(path: str | Path) -> tuple[ActionExpertNet, dict, list[int] | None]:
    """The network whose export is ``path`` (``.onnx`` + its ``.json``), its metadata, and the timesteps it
    is exact at (None: all). Raises :class:`InitError` naming the file when the weights cannot be found."""
    from .fused_sampler import FusedDDIMSampler, ddim_linear_coeffs

    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        cfg = ExpertNetConfig.from_dict(meta["model_config"])
        k, graph, opset = int(meta["ddim_steps"]), meta.get("graph", "plain"), int(meta.get("opset", 17))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InitError(f"{path}: cannot read its metadata {path.with_suffix('.json').name} ({e}); the model "
                        "config, K and normalisation are needed to fine-tune it") from e
    if graph not in ("plain", "fused"):
        raise InitError(f"{path}: a {graph!r} graph; only 'plain' and 'fused' exports can be read back")
    t0 = time.perf_counter()
    probe = make_net(cfg, seed=1).eval()
    gen = torch.Generator().manual_seed(20251203)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    fused = FusedDDIMSampler(probe, k).eval() if graph == "fused" else None
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        _export_probe(fused if fused is not None else DDIMSampler(probe, k).eval(), cfg, probe_path, opset)
        probe_t = graph_tensors(probe_path)
    source = graph_tensors(path)
    by_size: dict[int, list] = {}
    for name, v in probe_t.items():
        if v.dtype == np.float32:
            by_size.setdefault(v.size, []).append((name, v.reshape(-1)))

    def read(value: torch.Tensor, what: str, required: bool = True) -> torch.Tensor | None:
        v = value.detach().numpy().astype(np.float32)
        for name, p in by_size.get(v.size, []):
            for transposed in ((False, True) if v.ndim == 2 else (False,)):
                want = v.T if transposed else v
                if np.array_equal(p, want.reshape(-1)) and name in source and source[name].size == v.size:
                    arr = source[name].reshape(want.shape)
                    return torch.from_numpy(np.array(arr.T if transposed else arr, np.float32))
        if required:
            raise InitError(f"{path}: {what} {tuple(value.shape)} not found in the graph; was it exported by this "
                            f"version of edgebridge and torch {torch.__version__}?")
        return None

    net = make_net(cfg, seed=0).eval()
    state = net.state_dict()
    folded = ("unet.step_embed.", ".film.", "unet.final.1.", "aux_head.") if fused is not None else ("aux_head.",)
    for name, value in probe.state_dict().items():
        if not any(f in name for f in folded):
            state[name] = read(value, f"parameter {name}")
    timesteps = None
    if fused is not None:
        step_dim = cfg.step_embed
        cond_w = read(fused.film_cond_w, "the FiLM condition weights")
        film_step = torch.stack([read(fused.film_step[i], f"the FiLM step constants of step {i}") for i in range(k)])
        pq = [ddim_linear_coeffs(a, b, cfg.prediction) for a, b in fused.coeffs]
        j = int(np.argmax([abs(q) for _, q in pq]))
        state["unet.final.1.weight"] = read(fused.final_w[j], "the final convolution") / pq[j][1]
        state["unet.final.1.bias"] = read(fused.final_b[j], "the final convolution bias") / pq[j][1]
        net.load_state_dict(state)
        with torch.no_grad():  # FiLM step part: W_s silu(step_mlp(t_i)) + b = film_step[i] - [1; 0], i < K
            e = torch.nn.functional.silu(net.unet.step_embed(torch.tensor(fused.timesteps)))
            lhs = torch.cat([e, torch.ones(k, 1)], dim=1).double()
            ones = torch.cat([torch.cat([torch.ones(b.c_out), torch.zeros(b.c_out)]) for b in fused.blocks])
            sol = torch.linalg.lstsq(lhs, (film_step - ones).double(), driver="gelsd").solution.float()
            blocks = [b for level in net.unet.down for b in level[:2]] + list(net.unet.mid) + \
                     [b for level in net.unet.up for b in level[:2]]
            row = 0
            for b in blocks:
                n = 2 * b.c_out
                b.film[1].weight[:, :step_dim] = sol[:step_dim, row:row + n].T
                b.film[1].weight[:, step_dim:] = cond_w[row:row + n]
                b.film[1].bias[:] = sol[step_dim, row:row + n]
                row += n
        timesteps = list(fused.timesteps)
    else:
        net.load_state_dict(state)
    out, ref = _outputs(path, net, k)
    diff = float(np.max(np.abs(out - ref)))
    if not diff <= RECOVERY_TOL:
        raise InitError(f"{path}: the recovered weights reproduce the graph only to {diff:.3g} (> {RECOVERY_TOL:g}); "
                        f"it was exported by other code; fine-tune from its training run (--init RUN_DIR) instead")
    log.info("recovered %s (%s graph, K=%d) in %.1f s; outputs agree to %.2g", path, graph, k, time.perf_counter() - t0,
             diff)
    return net.train(), meta, timesteps


def load_init(init: str | Path) -> Init:
    """``shipped``, an ``.onnx`` export or a training run directory -> :class:`Init`."""
    if str(init) == "shipped":
        models = sorted(SHIPPED.glob("*.onnx"))
        if not models:
            raise InitError(f"--init shipped: no expert in {SHIPPED}; `make weights` writes it, or pass --init RUN_DIR")
        init = models[0]
    p = Path(init)
    if p.is_dir():
        try:
            net, rec = load_final(p)
        except (FileNotFoundError, ValueError) as e:
            raise InitError(str(e)) from e
        tc = rec.get("train_config") or {}
        earlier = (rec.get("extra_metadata") or {}).get("finetune") or {}  # a fine-tuning run: its K and timesteps
        k = int(earlier.get("ddim_steps") or tc.get("eval_k", 10))
        return Init(net.train(), Normalizer.from_dict(rec["norm"]), FeatureSpec(**rec["spec"]), k,
                    CloudROI.from_dict((rec.get("data") or {}).get("cloud_roi")), tc, rec.get("correction_limit"),
                    rec.get("data") or {}, f"training run {p}", earlier.get("timesteps"))
    if not p.is_file():
        raise InitError(f"--init {init}: no such file or run directory (expected 'shipped', an .onnx export or a "
                        f"training run directory with final.pt)")
    net, meta, timesteps = recover_onnx(p)
    norm = meta["normalization"]
    spec = FeatureSpec(n_points=int(meta["n_points"]), guidance_steps=int(meta["guidance_steps"]),
                       horizon=int(meta["horizon"]), action_dt=float(meta.get("action_dt", 0.1)))
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    return Init(net, Normalizer.from_dict(norm), spec, int(meta["ddim_steps"]), CloudROI.from_dict(meta.get("cloud_roi")),
                meta.get("train_config") or {}, meta.get("correction_limit"), meta.get("data") or {},
                f"{p} (sha256 {sha[:12]})", timesteps)


# --------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FinetuneConfig:
    """Steps and optimiser; ``plan_shift_m`` / ``arm_shift_m`` / ``clean_plan_fraction``: None keeps what the
    initial weights were trained with; ``goal_noise``: APPF's, on the guidance tokens (normalised units)."""

    steps: int = 400
    batch: int = 64
    lr: float = 1e-4
    warmup: int = 20
    weight_decay: float = 1e-6
    ema_decay: float = 0.99
    goal_noise: float = 0.1
    plan_shift_m: float | None = None
    arm_shift_m: float | None = None
    clean_plan_fraction: float | None = None
    val_fraction: float = 0.2
    eval_every: int = 100
    max_eval_samples: int = 512
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.lr > 0 or self.eval_every < 1:
            raise ValueError(f"FinetuneConfig: need steps >= 0, batch >= 1, lr > 0, eval_every >= 1; got {self}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"FinetuneConfig.val_fraction: must lie in [0, 1), got {self.val_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"FinetuneConfig.ema_decay: must lie in [0, 1), got {self.ema_decay}")


def _device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"training device {device!r}: use 'cpu' or 'cuda[:N]' ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training device {device!r}: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"training device {device!r}: use 'cpu' or 'cuda[:N]'")
    return str(dev)


class _Split:
    """Normalised tensors of one split, in the interface ``appf.evaluate`` reads."""

    def __init__(self, ds, norm: Normalizer) -> None:
        self.cloud, self.proprio, self.guidance, self.action = (
            torch.from_numpy(norm.normalize(k, getattr(ds, k))) for k in ("cloud", "proprio", "guidance", "action"))

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def batch(self, idx: np.ndarray, use_cloud: bool = True):
        i = torch.from_numpy(np.asarray(idx))
        return (self.cloud[i] if use_cloud else None), self.proprio[i], self.guidance[i], self.action[i]


def _tasks(meta: dict) -> list[str]:
    """Task names of a loaded demonstration set: its episodes' task slugs, else its task strings."""
    out = []
    for src in meta.get("sources", []):
        eps = src.get("episodes") if isinstance(src.get("episodes"), list) else []
        names = [e.get("task") for e in eps if isinstance(e, dict) and e.get("task")] or list(src.get("tasks") or [])
        out += [str(n) for n in names if str(n) not in out]
    return out


class FineTuner:
    """Fine-tunes :func:`load_init`'s weights on ``demo_dirs`` in ``run_dir`` (module docstring)."""

    def __init__(self, demo_dirs: list[Path], run_dir: Path, cfg: FinetuneConfig | None = None, *,
                 init: str | Path = "shipped", hindsight: HindsightConfig | None = None, command: str = "",
                 device: str = "cpu") -> None:
        self.cfg = cfg = cfg or FinetuneConfig()
        self.device = _device(device)
        torch.set_num_threads(cfg.threads)
        self.init = ini = load_init(init)
        self.run_dir = Path(run_dir)
        tc = ini.train_config
        self.plan_shift = float(tc.get("plan_shift_m", 0.0) if cfg.plan_shift_m is None else cfg.plan_shift_m)
        self.arm_shift = float(tc.get("arm_shift_m", 0.0) if cfg.arm_shift_m is None else cfg.arm_shift_m)
        self.clean = float(tc.get("clean_plan_fraction", 0.0) if cfg.clean_plan_fraction is None else cfg.clean_plan_fraction)
        meta = read_meta(Path(list(demo_dirs)[0]))
        dt = float(meta.get("action_dt", ini.spec.action_dt))
        if abs(dt - ini.spec.action_dt) > 1e-9:
            raise DemoError(f"{demo_dirs[0]}: recorded at {dt} s per step, the expert acts every {ini.spec.action_dt} s; "
                            f"record at the expert's rate (the setup's expert.dt)")
        # the goal noise of the hindsight anchors in the expert's own normalised units of guidance positions
        hs = hindsight or HindsightConfig(noise_scale_m=tuple(float(x) for x in ini.norm.std["guidance"][:3]))
        hs = replace(hs, action_dt=ini.spec.action_dt, guidance_steps=ini.spec.guidance_steps + 1, seed=cfg.seed)
        self.hindsight = hs
        ds = load_demos(demo_dirs, ini.spec, hindsight=Hindsight(hs))
        train_ds, val_ds = ds.split(cfg.val_fraction, cfg.seed)
        self.train_data = _Split(train_ds, ini.norm)
        self.val_data = _Split(val_ds if len(val_ds) else train_ds, ini.norm)
        self.fit_cloud = lambda c: fit_clouds(c, ini.net.cfg.n_points, ini.norm, ini.roi)
        self.data_meta = plain({**ds.meta, "train_samples": len(train_ds), "val_samples": len(val_ds),
                                "cloud_roi": ini.roi.to_dict() if ini.roi else None,
                                "tasks": list(dict.fromkeys([*(ini.data.get("tasks") or []), *_tasks(ds.meta)]))})
        self.command = command
        self.net = ini.net.to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.timesteps = torch.tensor(ini.timesteps if ini.timesteps is not None else range(ini.net.cfg.train_steps))
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.rows, self.elapsed, self.before = 0, [], 0.0, None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self._config(), indent=2))
        self._resume()

    def _config(self) -> dict:
        return plain({"finetune": asdict(self.cfg), "init": self.init.source, "hindsight": {
            **asdict(self.hindsight), "guidance": asdict(self.hindsight.guidance)},
            "plan_shift_m": self.plan_shift, "arm_shift_m": self.arm_shift, "clean_plan_fraction": self.clean,
            "timesteps": None if self.init.timesteps is None else list(self.init.timesteps)})

    def evaluate(self, net: ActionExpertNet) -> dict:
        return evaluate(net, self.val_data, self.init.norm, use_cloud=True, k=self.init.k, seed=self.cfg.seed + 1,
                        max_samples=self.cfg.max_eval_samples, fit_cloud=self.fit_cloud, device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        state = {"step": self.step, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
                 "opt": self.opt.state_dict(), "rows": plain(self.rows), "before": plain(self.before),
                 "rng": plain(self.rng.bit_generator.state), "gen": self.gen.get_state(), "elapsed": self.elapsed,
                 "config": self._config()}
        tmp = self.run_dir / "ckpt.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / "ckpt.pt")

    def _resume(self) -> None:
        path = self.run_dir / "ckpt.pt"
        if not path.exists():
            return
        state = load_checkpoint(path, ("step", "net", "ema", "opt", "rows", "config"), map_location=self.device)
        if state["config"] != self._config():
            raise ValueError(f"{path}: written by a fine-tuning with other settings; use a new --run directory")
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.rows, self.before, self.elapsed = state["step"], state["rows"], state["before"], state["elapsed"]
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"].cpu())
        log.info("resumed %s at step %d", path, self.step)

    # ------------------------------------------------------------------ loop
    def _lr(self) -> float:
        c = self.cfg
        if self.step < c.warmup:
            return c.lr * (self.step + 1) / c.warmup
        p = min((self.step - c.warmup) / max(c.steps - c.warmup, 1), 1.0)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    def _train_step(self) -> float:
        c, norm = self.cfg, self.init.norm
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        idx = self.rng.integers(0, len(self.train_data), c.batch)
        cloud, proprio, guidance, action = self.train_data.batch(idx)
        if self.plan_shift > 0:
            shift = self.plan_shift * torch.randn((c.batch, 3), generator=self.gen)
            if self.clean > 0:
                from .appf import cancelling_plan_shift

                keep = torch.rand(c.batch, generator=self.gen) < self.clean
                shift = torch.where(keep[:, None], cancelling_plan_shift(norm, action), shift)
            cloud, guidance, action = shift_plan(norm, shift, cloud, guidance, action)
        if self.arm_shift > 0:
            proprio, guidance = shift_arm(norm, self.arm_shift * torch.randn((c.batch, 3), generator=self.gen),
                                          proprio, guidance)
        cloud = self.fit_cloud(cloud)
        if c.goal_noise > 0:
            guidance = guidance + c.goal_noise * torch.randn(guidance.shape, generator=self.gen)
        t = self.timesteps[torch.randint(0, len(self.timesteps), (c.batch,), generator=self.gen)]
        noise = torch.randn(action.shape, generator=self.gen)
        dev = self.device
        loss = self.net.loss_at(cloud.to(dev), proprio.to(dev), guidance.to(dev), action.to(dev), t.to(dev), noise.to(dev))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                pe.mul_(c.ema_decay).add_(p.detach(), alpha=1 - c.ema_decay)
        return float(loss.item())

    def run(self) -> dict:
        """Fine-tune; returns {"before": ..., "after": ..., ...} (also ``metrics.json``) and writes ``final.pt``."""
        c = self.cfg
        if self.before is None:
            self.before = self.evaluate(self.net)
            log.info("before: validation position error %.1f mm from zero noise (%.1f mm sampled; the guidance alone "
                     "%.1f mm), loss %.4f", self.before["pos_err_zero_mm"], self.before["pos_err_mm"],
                     self.before["ik_pos_err_mm"], self.before["loss"])
        self.net.train()
        t_last = time.monotonic()
        while self.step < c.steps:
            loss = self._train_step()
            self.step += 1
            now = time.monotonic()
            self.elapsed += now - t_last
            t_last = now
            row = {"step": self.step, "loss": loss, "lr": self._lr(), "time_s": round(self.elapsed, 2)}
            if self.step % c.eval_every == 0 or self.step == c.steps:
                m = self.evaluate(self.ema)
                row.update(val_loss=m["loss"], val_pos_err_zero_mm=m["pos_err_zero_mm"], val_pos_err_mm=m["pos_err_mm"])
                log.info("step %d/%d loss %.4f val %.4f, position error %.1f mm from zero noise (%.0f s)", self.step,
                         c.steps, loss, m["loss"], m["pos_err_zero_mm"], self.elapsed)
                self.rows.append(row)
                self._save()
                self._write_log()
                t_last = time.monotonic()
            else:
                self.rows.append(row)
        after = self.evaluate(self.ema)
        metrics = {"before": self.before, "after": after, "steps": c.steps, "train_time_s": round(self.elapsed, 1),
                   "train_samples": len(self.train_data), "val_samples": len(self.val_data),
                   "episodes": self.data_meta["episodes"], "init": self.init.source, "device": self.device}
        (self.run_dir / "metrics.json").write_text(json.dumps(plain(metrics), indent=2))
        self._write_log()
        ema = {k: v.cpu() for k, v in self.ema.state_dict().items()}
        ini = self.init
        flat = {f"val_{k}": v for k, v in after.items()}
        record = plain({"model_config": ini.net.cfg.to_dict(), "norm": ini.norm.to_dict(), "spec": asdict(ini.spec),
                        "metrics": {**flat, "train_time_s": metrics["train_time_s"], "eval_k": ini.k,
                                    "parameters": count_parameters(self.ema)},
                        "train_config": {**ini.train_config, "finetune": self._config()},
                        "data": self.data_meta, "command": self.command, "output": OUTPUT_RESIDUAL,
                        "correction_limit": ini.correction_limit,
                        "extra_metadata": {"finetune": {"init": ini.source, "before": self.before, "after": after,
                                                        "ddim_steps": ini.k, "timesteps": self._config()["timesteps"]}}})
        torch.save({**record, "ema": ema}, self.run_dir / "final.pt")
        log.info("fine-tuning done: validation position error %.1f -> %.1f mm (from zero noise)",
                 self.before["pos_err_zero_mm"], after["pos_err_zero_mm"])
        return metrics

    def _write_log(self) -> None:
        keys = ["step", "loss", "lr", "val_loss", "val_pos_err_zero_mm", "val_pos_err_mm", "time_s"]
        with open(self.run_dir / "log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)


__all__ = ["FineTuner", "FinetuneConfig", "Init", "InitError", "load_init", "recover_onnx"]
