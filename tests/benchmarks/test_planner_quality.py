"""benchmarks/planner_quality.py: the measures on a perfect planner (the oracle's own plans), the data set check,
and one run of the real GGUF path on a random tiny model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import planner_quality as pq

pytest.importorskip("pybullet", reason="the pointing scenes need pybullet ('sim' extra)")


def test_percentiles_count_misses_and_anchor_errors_match_in_order():
    assert pq.pct([1, 2, 3, 4], 50) == pytest.approx(np.percentile([1, 2, 3, 4], 50))
    assert pq.pct([1, 2, 3, math.inf], 50) == 2.5 and pq.pct([1, 2, 3, math.inf], 90) == math.inf
    assert math.isnan(pq.pct([], 50))
    assert pq.px_errors([(3, 4)], [(0, 0)], 2.0) == [10.0]
    assert pq.px_errors([(3, 4)], [(0, 0), (1, 1)], 2.0) == [math.inf, math.inf]  # wrong count: every anchor a miss
    assert pq.px_errors(None, [(0, 0)], 2.0) == [math.inf]
    seg = np.zeros((10, 10), np.int32)
    seg[5, 5] = 7
    assert pq.on_mask(seg, 7, 8, 5) and not pq.on_mask(seg, 7, 8, 8) and not pq.on_mask(seg, 3, 5, 5)


class OraclePlanner:
    """Stands in for GGUFPlanner: answers with the oracle's plan of the scene whose image it is given."""

    plans: dict = {}

    def __init__(self, config):
        self.config = config

    def plan(self, rgbd, instruction):
        from edgebridge.runtime.planner.format import parse_plan

        text = self.plans[rgbd.rgb.tobytes()]
        return parse_plan(text, instruction, rgbd.intrinsics.width, rgbd.intrinsics.height)

    def close(self):
        pass


def test_a_perfect_planner_gets_full_marks(pointing_data, tmp_path, monkeypatch):
    render = pq.render

    def recording_render(row, config=None):
        scene = render(row, config)
        OraclePlanner.plans[scene.rgb.tobytes()] = scene.plan_json
        return scene

    monkeypatch.setattr(pq, "render", recording_render)
    monkeypatch.setattr(pq, "GGUFPlanner", OraclePlanner)
    for name in ("lm.gguf", "mm.gguf"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    out = tmp_path / "pq.json"
    assert pq.main(["--vlm", str(tmp_path / "lm.gguf"), "--mmproj", str(tmp_path / "mm.gguf"), "--data",
                    str(pointing_data), "--unknown-scenes", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["scenes"] == len(pq.read_split(pointing_data, "test")) >= 1
    assert res["plan_parse_rate"] == 1.0 and res["plan_accepted_rate"] == 1.0
    assert res["anchor_px_median"] == 0.0 and res["anchor_px_p90"] == 0.0 and res["anchor_vs_prior_ratio"] == 0.0
    assert res["prior_px_median"] > 0
    assert res["scene_within_2cm"] == 1.0 and res["waypoint_cm_median"] < 0.5
    assert res["trained_phrasing_correct"] in (1.0, None) and res["heldout_phrasing_correct"] in (1.0, None)
    assert res["heldout_scenes"] + res["trained_scenes"] == res["scenes"]
    # the oracle's plan for "put the banana in the tray" on a cup scene is the cup's plan: first anchor on the cup
    assert res["unknown_object_plans"] == 2 and res["unknown_object_on_cup_rate"] == 1.0
    assert res["lm_mb"] == pytest.approx(0.001) and res["model"] == "lm.gguf"


def test_a_data_set_the_simulator_disagrees_with_stops_the_run(pointing_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pointing_data, data)
    meta = data / "test" / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    rows[0]["plan"] = rows[0]["plan"].replace('"yaw": ', '"yaw": 1')
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RuntimeError, match="rendered again"):
        pq.render(rows[0], pq.pointing_config(data))


def test_missing_data_set_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pq.main(["--data", str(tmp_path / "nope"), "--vlm", "a", "--mmproj", "b"])
    assert "not a pointing data set" in capsys.readouterr().err


def test_real_planner_path_on_a_random_model(random_vlm, pointing_data, tmp_path):
    lm, mm = random_vlm
    out = tmp_path / "pq.json"
    assert pq.main(["--vlm", str(lm), "--mmproj", str(mm), "--data", str(pointing_data), "--threads", "1",
                    "--unknown-scenes", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["plan_parse_rate"] == 1.0 and res["unknown_object_parse_rate"] == 1.0  # grammar-constrained
    assert res["plan_ms_p50"] > 0 and res["threads"] == 1 and res["model"] == "lm.gguf"
