"""benchmarks/sim_success.py --planner gguf: one episode with the VLM planner (a random tiny model)."""

from __future__ import annotations

import json

import pytest

import sim_success


def test_one_episode_with_the_vlm_planner(random_vlm, tmp_path, capsys):
    pytest.importorskip("pybullet", reason="the sim world needs pybullet ('sim' extra)")
    lm, mm = random_vlm
    out = tmp_path / "ss.json"
    rc = sim_success.main(["--planner", "gguf", "--vlm", str(lm), "--mmproj", str(mm), "--experts", "ik",
                           "--tasks", "put_cup_in_tray", "--seeds", "1", "--seed-base", "7000",
                           "--conditions", "clean", "--no-timings", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["planner"] == f"gguf ({lm.name} + {mm.name})"
    # random plans: the episode runs to its end and fails; the keys name the planner
    assert res["success.gguf+ik.put_cup_in_tray.clean"] == 0.0
    assert res["plans_accepted.gguf+ik.put_cup_in_tray.clean"] + res["plans_rejected.gguf+ik.put_cup_in_tray.clean"] >= 1
    assert "gguf (lm.gguf + mm.gguf) planner" in capsys.readouterr().out


def test_plan_noise_does_not_apply_to_the_vlm(random_vlm, capsys):
    lm, mm = random_vlm
    with pytest.raises(SystemExit):
        sim_success.main(["--planner", "gguf", "--vlm", str(lm), "--mmproj", str(mm), "--conditions", "clean,plan_1cm"])
    assert "change the oracle's plans" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sim_success.main(["--planner", "gguf", "--vlm", str(lm)])
    assert "--mmproj" in capsys.readouterr().err
