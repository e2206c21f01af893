"""One rank of the APPF DDP test (test_appf_ddp.py), started by ``torchrun --nproc-per-node 2``.

    ddp_appf_worker.py DEMO_DIR OUT_DIR CONFIG_JSON

Runs, in OUT_DIR: ``whole`` (a run from scratch; the Trainer joins the process group and, at the end,
destroys it: that call is recorded and the group kept, as a process joins a group once), ``part``
(stopped after 2 stage-1 steps, then resumed by a new Trainer), ``single`` (resumes a checkpoint written
by one process, which the test left there). Writes ``rank<R>.json``: what this rank saw, a hash of its
parameters after each run, and every file it wrote with ``torch.save`` or ``Path.write_text``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from edgebridge.train import distributed
from edgebridge.train.appf import StageConfig, Trainer, TrainConfig


def param_hash(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    demo, out, config = (Path(a) for a in sys.argv[1:4])
    cfg = TrainConfig.from_dict(json.loads(config.read_text()))
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    real_save, real_write_text = torch.save, Path.write_text

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # not the buffers collectives pickle into
            writes.append(str(f))
        return real_save(obj, f, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        writes.append(str(self))
        return real_write_text(self, *args, **kwargs)

    destroyed: list[str] = []
    real_destroy = distributed.destroy
    distributed.destroy = lambda: destroyed.append("destroy")
    torch.save, Path.write_text = save, write_text
    seen: dict = {}
    try:
        whole = Trainer([demo], out / "whole", cfg)
        seen.update(world=whole.world, owned_group=whole.owns_group)
        seen["metrics"] = whole.run()
        seen["destroyed_after_whole"] = list(destroyed)
        seen["whole"] = param_hash(whole.net)

        first = Trainer([demo], out / "part", cfg)
        encoder = param_hash(first.net.cloud_encoder)
        first._run_stage(1, StageConfig(2, cfg.stage1.batch, cfg.stage1.lr, False))
        seen["encoder_unchanged_in_stage1"] = param_hash(first.net.cloud_encoder) == encoder
        second = Trainer([demo], out / "part", cfg)  # resumes at stage 1, step 2
        seen["resumed_at"] = [second.stage, second.step]
        second.run()
        seen["part"] = param_hash(second.net)

        single = Trainer([demo], out / "single", cfg)
        seen["single_resumed_at"] = [single.stage, single.step]
        single.run()
        seen["single"] = param_hash(single.net)
        seen["destroyed"] = list(destroyed)  # by the Trainer that joined the group, not by the others
    finally:
        torch.save, Path.write_text = real_save, real_write_text
        distributed.destroy = real_destroy
        distributed.destroy()
    seen["group_destroyed"] = not dist.is_initialized()
    seen["writes"] = writes
    (out / f"rank{rank}.json").write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":
    main()
