"""benchmarks/sim_success.py --ik-from: plain-IK counts from an earlier run of the same scenes."""

from __future__ import annotations

import argparse
import json

import pytest

import sim_success


def _args(tmp_path, doc, **kw):
    f = tmp_path / "ik.json"
    f.write_text(json.dumps(doc))
    base = dict(ik_from=f, seeds=50, seed_base=6000, no_depth_tare=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_counts_come_from_the_success_keys_of_plain_ik_only(tmp_path):
    doc = {"seeds": 50, "seed_base": 6000, "depth_tare": True, "success.ik.put_cup_in_tray.clean": 0.9,
           "success.ik.put_cup_in_tray.plan_3cm": 0.64, "success.expert.put_cup_in_tray.clean": 1.0,
           "success.gguf+ik.put_cup_in_tray.clean": 0.72, "plans_accepted.ik.put_cup_in_tray.clean": 1.0}
    counts = sim_success.ik_counts(argparse.ArgumentParser(), _args(tmp_path, doc))
    assert counts == {("ik", "put_cup_in_tray", "clean"): (45, 50), ("ik", "put_cup_in_tray", "plan_3cm"): (32, 50),
                      ("gguf+ik", "put_cup_in_tray", "clean"): (36, 50)}


@pytest.mark.parametrize("change", [{"seeds": 20}, {"seed_base": 0}, {"depth_tare": False}])
def test_other_scenes_are_refused_before_any_episode(tmp_path, capsys, change):
    doc = {"seeds": 50, "seed_base": 6000, "depth_tare": True, "success.ik.put_cup_in_tray.clean": 0.9, **change}
    with pytest.raises(SystemExit):
        sim_success.ik_counts(argparse.ArgumentParser(), _args(tmp_path, doc))
    assert "measured other scenes" in capsys.readouterr().err


def test_a_file_without_plain_ik_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sim_success.ik_counts(argparse.ArgumentParser(), _args(tmp_path, {"seeds": 50, "seed_base": 6000,
                                                                           "depth_tare": True}))
    assert "no success.ik" in capsys.readouterr().err


def test_the_vs_ik_table_uses_the_earlier_counts(tmp_path, capsys):
    counts = {("ik", "put_cup_in_tray", "clean"): (45, 50), ("expert", "put_cup_in_tray", "clean"): (50, 50)}
    flat = sim_success.vs_ik_table(counts)
    assert flat["vs_ik.expert.put_cup_in_tray.clean.verdict"] == "above"
    assert flat["vs_ik.expert.put_cup_in_tray.clean.p_above"] == pytest.approx(0.0281, abs=1e-3)
