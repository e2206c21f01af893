"""Free-text tasks: ``match_task`` picks the scene a text names by its objects and verbs (with synonyms),
the text reaches the planner word for word, and text naming no task (or an object no task has) fails
with one line listing the tasks."""

import dataclasses
import json

import pytest

from edgebridge.errors import UnknownNameError
from edgebridge.sim.tasks import TASKS, match_task, match_words, resolve_steps

PHRASINGS = [
    ("drop the mug in the bin", "put_cup_in_tray"),
    ("please carefully place the white mug inside the container", "put_cup_in_tray"),
    ("pick up the cup and put it in the tray", "put_cup_in_tray"),
    ("put the coffee mug into the basket", "put_cup_in_tray"),
    ("put mug in box", "put_cup_in_tray"),
    ("put the red block on the blue one", "stack_red_on_blue"),
    ("stack red on blue", "stack_red_on_blue"),
    ("put the red cube on top of the blue cube", "stack_red_on_blue"),
    ("pile the red brick onto the blue brick", "stack_red_on_blue"),
    ("put the red cube in the tray, then the cup", "put_cube_then_cup_in_tray"),
    ("move the red block to the bin and then the mug", "put_cube_then_cup_in_tray"),
    ("put the cup in the tray then the red cube", "put_cube_then_cup_in_tray"),  # same scene, other order
    ("clear the table", "clear_table"),
    ("put everything in the box", "clear_table"),
    ("tidy the table into the bin", "clear_table"),
    ("clear the table, starting with the red block", "clear_table"),
    ("clear the table into the container reaching over the wall", "clear_table_obstacle"),
    ("put all the objects in the tray, going around the obstacle", "clear_table_obstacle"),
    ("clear the table into the tray over the block", "clear_table_obstacle"),
]


def _all_phrasings():
    for spec in TASKS.values():
        for p in (*spec.phrasings, *getattr(spec, "heldout_phrasings", ())):
            yield p, spec.slug


@pytest.mark.parametrize("text,slug", PHRASINGS)
def test_free_text_names_its_task(text, slug):
    assert match_task(text).slug == slug


@pytest.mark.parametrize("text,slug", list(_all_phrasings()))
def test_every_registered_phrasing_matches_its_own_task_by_its_words(text, slug):
    assert match_task(text).slug == slug
    assert match_words(text).slug == slug  # by the words alone, not by the phrasing lookup


def test_a_slug_names_its_task():
    for slug in TASKS:
        assert match_task(slug).slug == slug


@pytest.mark.parametrize("text,word", [("put the banana in the tray", "banana"), ("put banana in tray", "banana"),
                                       ("stack the red apple on the blue cube", "apple")])
def test_an_object_no_task_has_is_named(text, word):
    with pytest.raises(UnknownNameError) as e:
        match_task(text)
    msg = str(e.value)
    assert f"'{word}'" in msg and "no task's scene has" in msg and "\n" not in msg
    assert all(slug in msg for slug in TASKS)


@pytest.mark.parametrize("text,hint", [
    ("put the cube in the tray", "does not name the cup"),          # a task needs the cup too
    ("put the blue cube on the red cube", "stack_red_on_blue: the blue cube is where things go"),
    ("put the green cube in the tray", "no green cube"),
    ("hello robot", ""),
])
def test_text_naming_no_task_fails_with_the_tasks_and_an_example(text, hint):
    with pytest.raises(UnknownNameError) as e:
        match_task(text)
    msg = str(e.value)
    assert "names no known task" in msg and "drop the mug in the bin" in msg and hint in msg
    assert all(slug in msg for slug in TASKS) and "\n" not in msg


def test_ambiguous_text_names_the_candidates(monkeypatch):
    twin = dataclasses.replace(TASKS["put_cup_in_tray"], slug="put_cup_in_tray_twin", phrasings=("twin cup task",))
    monkeypatch.setitem(TASKS, twin.slug, twin)
    with pytest.raises(UnknownNameError, match="ambiguous.*put_cup_in_tray, put_cup_in_tray_twin"):
        match_task("put the coffee mug in the box")


def test_free_text_sets_up_the_scene_and_the_oracle_resolves_its_steps():
    from edgebridge.sim.episode import build_world

    text = "put the red block on the blue one"
    spec, world, _, _ = build_world(text, 0)
    try:
        assert spec.slug == "stack_red_on_blue"
        assert resolve_steps(world, text) == spec.steps  # the matched task's steps
        # an unregistered single step still resolves against the scene
        assert [(s.obj, s.target) for s in resolve_steps(world, "put the blue cube on the red cube")] == \
            [("blue_cube", "red_cube")]
    finally:
        world.close()


@pytest.mark.parametrize("text,slug", [("Drop the mug in the bin!", "put_cup_in_tray"),
                                       ("move the red block to the bin and then the mug", "put_cube_then_cup_in_tray")])
def test_edge_run_free_text_runs_the_tasks_scene_and_plans_the_text_word_for_word(text, slug, tmp_path, capsys,
                                                                                  monkeypatch):
    from edgebridge.runtime import devices as devices_mod
    from edgebridge.runtime.cli import main

    seen = []
    build = devices_mod.build_devices

    def spy(cfg, choices):
        dev, instruction = build(cfg, choices)
        inner = dev.planner

        class Spy:
            def plan(self, rgbd, text):
                seen.append(text)
                return inner.plan(rgbd, text)

            def close(self):
                inner.close()

        dev.planner = Spy()
        return dev, instruction

    monkeypatch.setattr(devices_mod, "build_devices", spy)
    out = tmp_path / "eps.jsonl"
    rc = main(["--task", text, "--planner", "oracle", "--expert", "ik", "--json", str(out)])
    row = json.loads(out.read_text())
    assert rc == 0 and row["success"], row["reason"]  # the oracle resolved the text's steps in that scene
    assert row["task"] == slug and row["instruction"] == text
    assert seen and set(seen) == {text}  # every plan request carried the user's text
    assert f"task {slug} (the scene of {text!r})" in capsys.readouterr().out


def test_edge_run_text_naming_no_task_is_one_line_and_exit_2(capsys):
    from edgebridge.runtime.cli import main

    assert main(["--task", "put the banana in the tray", "--expert", "ik"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-run: --task 'put the banana in the tray' names 'banana'")
    assert "put_cup_in_tray ('put cup in tray')" in err


def test_the_oracle_rejects_an_object_the_scene_lacks_and_the_episode_fails_with_the_scene_listed():
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.runtime.devices import RunChoices, build_devices
    from edgebridge.runtime.pipeline import Pipeline

    cfg = load_robot_config("sim_panda")
    dev, _ = build_devices(cfg, RunChoices(task="put_cup_in_tray", planner="oracle", expert="ik"))
    try:
        out = Pipeline(cfg, dev).run("put the banana in the tray", task="put_cup_in_tray")
    finally:
        dev.close()
    assert not out.success and out.reason.startswith("plan rejected: PlanError: no object 'banana' in the scene")
    assert "it has: cup (" in out.reason and out.reason.endswith("(3 attempts)")
    assert out.planning["rejected"] == 3 and out.loop["sent"] == 0
