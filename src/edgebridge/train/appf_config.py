"""The APPF training settings: :class:`TrainConfig` (the network, both stages, the augmentations, the
schedule) and one stage's :class:`StageConfig` (steps, global batch, learning rate, clouds or not)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .model import ExpertNetConfig


@dataclass(frozen=True)
class StageConfig:
    steps: int
    batch: int
    lr: float
    use_cloud: bool

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.lr > 0:
            raise ValueError(f"StageConfig: need steps >= 0, batch >= 1, lr > 0; got {self}")


@dataclass(frozen=True)
class TrainConfig:
    model: ExpertNetConfig = field(default_factory=ExpertNetConfig)
    stage1: StageConfig = StageConfig(steps=1500, batch=1024, lr=1e-3, use_cloud=False)
    stage2: StageConfig = StageConfig(steps=2000, batch=256, lr=5e-4, use_cloud=True)
    goal_noise: float = 0.1
    plan_shift_m: float = 0.0
    arm_shift_m: float = 0.0
    clean_plan_fraction: float = 0.0
    aux_weight: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 250
    ckpt_every: int = 250
    ema_decay: float = 0.995
    warmup: int = 100
    weight_decay: float = 1e-6
    threads: int = 2
    eval_k: int = 10

    def __post_init__(self) -> None:
        if self.goal_noise < 0:
            raise ValueError(f"TrainConfig.goal_noise: must be >= 0, got {self.goal_noise}")
        for name in ("plan_shift_m", "arm_shift_m"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"TrainConfig.{name}: metres in [0, 0.5), got {getattr(self, name)}")
        if not 0 <= self.clean_plan_fraction <= 1:
            raise ValueError(f"TrainConfig.clean_plan_fraction: must lie in [0, 1], got {self.clean_plan_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction: must lie in [0, 1), got {self.val_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay: must lie in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ExpertNetConfig.from_dict(d.get("model", {}))
        d.setdefault("plan_shift_m", 0.0)
        d.setdefault("arm_shift_m", 0.0)
        d.setdefault("clean_plan_fraction", 0.0)
        d.setdefault("aux_weight", 0.0)
        for s in ("stage1", "stage2"):
            if s in d:
                d[s] = StageConfig(**d[s])
        return cls(**d)
