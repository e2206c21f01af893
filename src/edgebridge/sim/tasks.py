"""Tasks of the embedded world: seeded scenes, pick-and-place steps and success predicates.

A :class:`TaskSpec` builds a scene into a :class:`~edgebridge.sim.world.SimWorld` (object poses and
colours drawn from a seeded generator; the camera pose jittered by a few cm and degrees), lists its
pick-and-place :class:`Step` s (what the oracle planner plans) and checks success from simulator state.

Lookup: :func:`get_task` takes a slug (``put_cup_in_tray``) or an instruction in any registered
phrasing (``"place the mug into the tray"``). :func:`resolve_steps` turns an instruction into steps
against the objects of the current scene, including simple unregistered ones ("put the green cube in
the tray"); an object the scene does not have gives an error listing what it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import PlanError, UnknownNameError
from .world import COLORS, SimWorld

TRAY_INNER_HALF = 0.13
TRAY_WALL_TOP = 0.075


@dataclass(frozen=True)
class Step:
    """Pick ``obj`` and release it in/on ``target`` (both scene object names)."""

    obj: str
    target: str


@dataclass(frozen=True)
class TaskSpec:
    slug: str
    level: str
    phrasings: tuple[str, ...]
    build: Callable[[SimWorld, np.random.Generator], None]
    steps: tuple[Step, ...]
    max_seconds: float
    camera_jitter_m: float = 0.03
    # further phrasings with synonyms, kept out of VLM training (held out for val/test of pointing data)
    heldout_phrasings: tuple[str, ...] = ()

    @property
    def instruction(self) -> str:
        return self.phrasings[0]


# --------------------------------------------------------------------------- success predicates


def in_tray(world: SimWorld, obj: str, tray: str = "tray") -> tuple[bool, str]:
    """The object rests inside the tray's walls, below their top, and the gripper is not holding it."""
    if not world.on_table(obj):
        return False, f"{obj} was knocked off the table"
    p = world.pose(obj).position
    t = world.pose(tray).position
    d = np.abs(p[:2] - t[:2])
    if np.any(d > TRAY_INNER_HALF):
        return False, f"{obj} at {np.round(p, 3).tolist()} is not inside the tray at {np.round(t, 3).tolist()}"
    if p[2] > TRAY_WALL_TOP + t[2]:
        return False, f"{obj} is above the tray (z={p[2]:.3f} m), not resting in it"
    if world.gripper_holds(obj):
        return False, f"{obj} is over the tray but still held by the gripper"
    return True, f"{obj} is in the tray"


def stacked(world: SimWorld, top: str, bottom: str, xy_tol: float = 0.025) -> tuple[bool, str]:
    """``top`` rests on ``bottom`` (centres within ``xy_tol``, heights one on the other), not held."""
    for n in (top, bottom):
        if not world.on_table(n):
            return False, f"{n} was knocked off the table"
    a, b = world.pose(top).position, world.pose(bottom).position
    dz_want = (world.object(top).size[2] + world.object(bottom).size[2]) / 2
    if np.linalg.norm(a[:2] - b[:2]) > xy_tol or abs((a[2] - b[2]) - dz_want) > 0.015:
        return False, f"{top} at {np.round(a, 3).tolist()} is not stacked on {bottom} at {np.round(b, 3).tolist()}"
    if world.gripper_holds(top):
        return False, f"{top} is on {bottom} but still held by the gripper"
    return True, f"{top} is on {bottom}"


def step_done(world: SimWorld, step: Step) -> tuple[bool, str]:
    if world.object(step.target).kind == "tray":
        return in_tray(world, step.obj, step.target)
    return stacked(world, step.obj, step.target)


def check_success(world: SimWorld, steps: tuple[Step, ...]) -> tuple[bool, str]:
    """All steps satisfied at once; the reason names the first unmet one (or that all are met)."""
    for s in steps:
        ok, why = step_done(world, s)
        if not ok:
            return False, why
    return True, "; ".join(step_done(world, s)[1] for s in steps)


# --------------------------------------------------------------------------- scenes


def _jitter(rng: np.random.Generator, centre, half) -> list[float]:
    return [float(c + rng.uniform(-h, h)) for c, h in zip(centre, half)]


def _distractor_colors(rng: np.random.Generator, avoid: set[str], n: int) -> list[str]:
    pool = [c for c in ("green", "yellow", "orange", "purple") if c not in avoid]
    return [str(c) for c in rng.choice(pool, size=n, replace=False)]


def _cup(world: SimWorld, rng: np.random.Generator, centre=(0.50, -0.12)) -> None:
    color = str(rng.choice(["red", "white", "orange", "purple", "yellow"]))
    world.add_object("cup", "mug", _jitter(rng, centre, (0.05, 0.05)), yaw=float(rng.uniform(-np.pi, np.pi)),
                     color=color, aliases=("mug", f"{color} cup", f"{color} mug"))


def _tray(world: SimWorld, rng: np.random.Generator, centre=(0.48, 0.30)) -> None:
    world.add_object("tray", "tray", _jitter(rng, centre, (0.03, 0.03)), yaw=float(rng.uniform(-0.15, 0.15)),
                     color="grey", aliases=("box", "bin"))


def _cube(world: SimWorld, rng: np.random.Generator, color: str, centre, half=(0.03, 0.03)) -> None:
    world.add_object(f"{color}_cube", "cube", _jitter(rng, centre, half), yaw=float(rng.uniform(-0.6, 0.6)),
                     color=color, aliases=(f"{color} cube", f"{color} block"))


def build_cup_in_tray(world: SimWorld, rng: np.random.Generator) -> None:
    _tray(world, rng)
    _cup(world, rng)
    for c in _distractor_colors(rng, set(), 1):
        _cube(world, rng, c, (0.62, -0.30))


def build_cube_then_cup(world: SimWorld, rng: np.random.Generator) -> None:
    _tray(world, rng)
    _cup(world, rng, centre=(0.55, -0.18))
    _cube(world, rng, "red", (0.40, -0.05))


def build_stack(world: SimWorld, rng: np.random.Generator) -> None:
    _cube(world, rng, "blue", (0.45, 0.12))
    _cube(world, rng, "red", (0.50, -0.15))
    for c in _distractor_colors(rng, {"red", "blue"}, 1):
        _cube(world, rng, c, (0.62, -0.32))


def build_clear(world: SimWorld, rng: np.random.Generator) -> None:
    _tray(world, rng)
    _cup(world, rng, centre=(0.58, -0.15))
    _cube(world, rng, "red", (0.40, -0.08), (0.025, 0.025))
    _cube(world, rng, "blue", (0.44, -0.28), (0.025, 0.025))


def build_clear_obstacle(world: SimWorld, rng: np.random.Generator) -> None:
    build_clear(world, rng)
    tray_y = world.pose("tray").position[1]
    world.add_object("block", "block", [0.48 + rng.uniform(-0.02, 0.02), tray_y - 0.22], color="brown",
                     size=(0.24, 0.03, 0.12), aliases=("obstacle", "wall", "brown block"))


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.slug in TASKS:
        raise ValueError(f"task slug {spec.slug!r} is already registered")
    TASKS[spec.slug] = spec
    return spec


register(TaskSpec("put_cup_in_tray", "short",
                  ("put cup in tray", "put the cup in the tray", "place the mug into the tray",
                   "put the mug in the tray", "place the cup in the tray", "place the cup into the tray",
                   "move the cup to the tray", "put the cup into the tray"),
                  build_cup_in_tray, (Step("cup", "tray"),), max_seconds=20.0,
                  heldout_phrasings=("drop the mug in the bin", "could you put the cup into the box",
                                     "set the mug inside the tray")))
register(TaskSpec("put_cube_then_cup_in_tray", "middle",
                  ("put the red cube in the tray, then the cup", "put the red cube in the tray then the cup",
                   "place the red cube into the tray, then the mug"),
                  build_cube_then_cup, (Step("red_cube", "tray"), Step("cup", "tray")), max_seconds=35.0,
                  heldout_phrasings=("first drop the red block in the bin, then the mug",
                                     "put the red block into the box and then the cup")))
register(TaskSpec("stack_red_on_blue", "middle",
                  ("stack the red cube on the blue cube", "put the red cube on the blue cube",
                   "stack red cube on blue cube"),
                  build_stack, (Step("red_cube", "blue_cube"),), max_seconds=20.0,
                  heldout_phrasings=("put the red block on top of the blue block", "place the red cube onto the blue one",
                                     "set the red block on the blue block")))
register(TaskSpec("clear_table", "long",
                  ("clear the table into the tray", "put everything in the tray", "clear the table"),
                  build_clear, (Step("red_cube", "tray"), Step("cup", "tray"), Step("blue_cube", "tray")),
                  max_seconds=50.0,
                  heldout_phrasings=("tidy up the table into the box", "put all the objects in the bin")))
register(TaskSpec("clear_table_obstacle", "long",
                  ("clear the table into the tray over the block", "clear the table into the tray, reaching over the block"),
                  build_clear_obstacle,
                  (Step("red_cube", "tray"), Step("cup", "tray"), Step("blue_cube", "tray")), max_seconds=50.0,
                  heldout_phrasings=("put all the objects in the bin, reaching over the wall",
                                     "tidy up the table into the box over the obstacle")))


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def get_task(key: str) -> TaskSpec:
    """A task by slug or by any of its phrasings, held-out ones included (case and punctuation ignored)."""
    if key in TASKS:
        return TASKS[key]
    norm = normalize(key)
    for spec in TASKS.values():
        if norm == spec.slug or any(norm == normalize(p) for p in (*spec.phrasings, *spec.heldout_phrasings)):
            return spec
    known = "; ".join(f"{s.slug} ({s.instruction!r})" for s in TASKS.values())
    raise UnknownNameError(f"unknown task or instruction {key!r}; known tasks: {known}")


_PICK_PLACE = re.compile(r"^(?:put|place|move|drop|stack|set) (?:the )?(?P<obj>[a-z0-9 ]+?) "
                         r"(?:in|into|to|inside|on|onto|on top of|in to) (?:the )?(?P<dst>[a-z0-9 ]+)$")


def find_object(world: SimWorld, phrase: str) -> str:
    """Scene object named by ``phrase`` (its name, a name with spaces, or an alias)."""
    phrase = normalize(phrase)
    for name, obj in world.objects.items():
        if phrase in {normalize(name.replace("_", " ")), normalize(name), *(normalize(a) for a in obj.aliases)}:
            return name
    raise PlanError(f"no object {phrase!r} in the scene; it has: {describe_scene(world)}")


def describe_scene(world: SimWorld) -> str:
    return ", ".join(f"{n} ({o.color} {o.kind})" for n, o in sorted(world.objects.items())) or "nothing"


def resolve_steps(world: SimWorld, instruction: str) -> tuple[Step, ...]:
    """Steps that carry out ``instruction`` in the current scene; clear errors otherwise."""
    try:
        spec = get_task(instruction)
    except KeyError:
        spec = _matched_task(world, instruction)  # free text naming a task (match_task) whose objects are here
    if spec is not None:
        for s in spec.steps:
            for n in (s.obj, s.target):
                if n not in world.objects:
                    raise PlanError(f"instruction {instruction!r} needs {n!r}, which the scene lacks; "
                                    f"the scene has: {describe_scene(world)}")
        return spec.steps
    m = _PICK_PLACE.match(normalize(instruction))
    if m is None:
        known = "; ".join(repr(s.instruction) for s in TASKS.values())
        raise PlanError(f"cannot understand instruction {instruction!r}; try 'put the <object> in the tray' with an "
                        f"object of the scene ({describe_scene(world)}), or one of: {known}")
    obj, dst = find_object(world, m["obj"]), find_object(world, m["dst"])
    if world.object(obj).fixed:
        raise PlanError(f"instruction {instruction!r}: {obj} is fixed to the table and cannot be picked")
    if obj == dst:
        raise PlanError(f"instruction {instruction!r}: cannot place {obj} on itself")
    return (Step(obj, dst),)


def setup_scene(world: SimWorld, spec: TaskSpec, seed: int) -> np.random.Generator:
    """Build the task's scene with ``seed`` and let it settle; returns the generator (for the camera jitter)."""
    if world.objects:
        raise ValueError(f"setup_scene: the world already has objects ({sorted(world.objects)}); use a fresh world")
    rng = np.random.default_rng(seed)
    spec.build(world, rng)
    world.settle(0.3)
    return rng


def jitter_camera(camera, rng: np.random.Generator, jitter_m: float) -> None:
    """Move a sim camera by up to ``jitter_m`` (eye and look-at point), i.e. a few cm and degrees."""
    c = camera.config
    eye = np.asarray(c.eye) + rng.uniform(-jitter_m, jitter_m, 3)
    target = np.asarray(c.target) + rng.uniform(-jitter_m, jitter_m, 3)
    camera.set_pose(eye, target)


__all__ = ["COLORS", "Step", "TaskSpec", "TASKS", "check_success", "describe_scene", "find_object", "get_task",
           "in_tray", "jitter_camera", "resolve_steps", "setup_scene", "stacked", "step_done"]


# --------------------------------------------------------------------------- free-text task matching

_KINDS = {"cup": ("cup", "cups", "mug", "mugs"), "tray": ("tray", "trays", "box", "boxes", "bin", "bins",
                                                         "container", "basket", "crate"),
          "cube": ("cube", "cubes", "block", "blocks", "brick", "bricks")}
_KIND_OF = {w: k for k, words in _KINDS.items() for w in words}
_OBSTACLE = {"obstacle", "obstacles", "wall", "barrier"}
_AROUND = {"over", "around", "past", "avoiding", "avoid", "across"}  # an obstacle when clearing the table
_CLEAR = {"clear", "tidy", "everything", "all", "clean"}
_PLACE_PREP = {"in", "into", "inside", "on", "onto", "to", "atop", "within"}
_PICK_VERBS = {"put", "place", "move", "drop", "stack", "set", "pick", "grab", "take", "bring", "throw", "toss",
               "lift", "carry", "transfer", "get", "load", "pile", "stick", "pop", "stash"}
_DETERMINERS = {"the", "a", "an", "my", "your", "our", "this", "these", "those"}
_ADJECTIVES = {"small", "big", "large", "little", "tiny", "other", "same", "empty", "plastic", "wooden", "top",
               "first", "second", "last", "remaining", "single"}
_SKIP = {"it", "them", "up", "down", "away", "back", "of", "too", "also"}
_GENERIC = {"one", "ones", "table", "desk", "objects", "object", "things", "thing", "items", "item", "stuff",
            "rest", "everything", "toys", "surface", "side", "middle", "centre", "center", "top", "way"}
_KNOWN = (_ADJECTIVES | _SKIP | _GENERIC | _CLEAR | _DETERMINERS | _PLACE_PREP | _PICK_VERBS | _OBSTACLE | _AROUND
          | set(_KIND_OF))
# cues a task needs in the text (and the text may not carry cues a task lacks)
_TASK_CUES = {"clear_table": frozenset({"clear"}), "clear_table_obstacle": frozenset({"clear", "obstacle"})}


@dataclass(frozen=True)
class _Mention:
    color: str | None
    kind: str | None
    target: bool  # after a placement preposition ("in the tray", "on top of the blue one")

    def fits(self, name: str) -> bool:
        color, kind = _name_concept(name)
        if self.kind is None:  # a colour alone ("stack red on blue") names an object of that colour
            return self.color == color
        return self.kind == kind and (self.color is None or color is None or self.color == color)

    def __str__(self) -> str:
        return " ".join(x for x in (self.color, self.kind or "object") if x)


def _name_concept(name: str) -> tuple[str | None, str]:
    """A scene object name -> (colour or None, kind): ``red_cube`` -> (red, cube), ``cup`` -> (None, cup)."""
    parts = name.split("_")
    color = parts[0] if len(parts) > 1 and parts[0] in COLORS else None
    return color, _KIND_OF.get(parts[-1], parts[-1])


def _read(text: str) -> tuple[list[_Mention], set[str], list[str]]:
    """The objects ``text`` mentions (colour, kind, target or not), its cues (clear, obstacle) and the
    words in an object's place that name no known object."""
    words = normalize(text).split()
    cues = {"clear"} if _CLEAR & set(words) else set()
    mentions: list[_Mention] = []
    unknown: list[str] = []
    color, target, last_kind, slot = None, False, None, False
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in _OBSTACLE or ("clear" in cues and (w in _AROUND or (w in ("block", "blocks") and color is None))):
            cues.add("obstacle")
            color, target, slot = None, False, False
            continue
        if w in COLORS:
            color, slot = w, True
            if (nxt in _KNOWN or not nxt) and nxt not in _KIND_OF and nxt not in _ADJECTIVES | {"one", "ones"}:
                # a colour alone names the object: "stack red on blue" ("the red apple": an unknown object)
                mentions.append(_Mention(color, None, target))
                color, target, slot = None, False, False
            continue
        if w in _KIND_OF or w in ("one", "ones"):
            kind = _KIND_OF.get(w, last_kind)
            mentions.append(_Mention(color, kind, target))
            last_kind = kind or last_kind
            color, target, slot = None, False, False
        elif w in _PLACE_PREP or w in _AROUND:  # "over the tray" (not clearing the table): a destination
            target, slot = True, False
        elif w in _DETERMINERS:
            slot = True
        elif w in _PICK_VERBS:  # "put banana in tray": the word between a verb and a preposition is an object
            slot = nxt not in _KNOWN and (words[i + 2] if i + 2 < len(words) else "") in _PLACE_PREP
            target = False
        elif w in _KNOWN:
            if w in _GENERIC:
                color, slot = None, False
        elif slot and nxt not in _KIND_OF and nxt not in COLORS:  # "the banana", not "the coffee mug"
            unknown.append(w)
            color, slot = None, False
        if w == "then":
            target = False
    return mentions, cues, unknown


def _candidate(spec: TaskSpec, mentions: list[_Mention], cues: set[str]) -> str | None:
    """None when ``spec`` fits the text, else why not (for the closest-task hint)."""
    if set(_TASK_CUES.get(spec.slug, ())) != cues:
        return "other cues"
    picks = {s.obj for s in spec.steps}
    targets = {s.target for s in spec.steps}
    for m in mentions:
        pool = targets if m.target else picks | (targets if "clear" in cues else set())
        if not any(m.fits(n) for n in pool):
            other = any(m.fits(n) for n in (picks if m.target else targets))
            return (f"it moves the {m} elsewhere" if m.target and other else
                    f"the {m} is where things go, not what it moves" if other else f"no {m} in it")
    if "clear" in cues:
        return None
    missing = [n.replace("_", " ") for n in sorted(picks | targets) if not any(m.fits(n) for m in mentions)]
    return f"the text does not name the {' and the '.join(missing)}" if missing else None


def _examples() -> str:
    return "; ".join(f"{s.slug} ({s.instruction!r})" for s in TASKS.values())


def match_task(text: str) -> TaskSpec:
    """The task whose scene ``text`` describes: a slug, a registered phrasing (held-out ones included), or
    free text matched by the objects it names and the verbs it uses, with synonyms (mug/cup,
    tray/box/bin/container, cube/block; "on top of", "clear the table" / "put everything", an obstacle:
    "over the block", "reaching over the wall"). Every object the text names must be in the task, and every
    object the task moves must be named (except "clear the table" tasks). Text naming an object no task
    has, matching no task, or matching several raises :class:`UnknownNameError` naming the tasks."""
    try:
        return get_task(text)
    except KeyError:
        return match_words(text)


def match_words(text: str) -> TaskSpec:
    """:func:`match_task` without the lookup by slug and phrasing: the task by the words alone."""
    mentions, cues, unknown = _read(text)
    if unknown:
        raise UnknownNameError(f"{text!r} names {', '.join(repr(w) for w in unknown)}, which no task's scene "
                               f"has (objects: cup/mug, tray/box/bin, red/blue cube or block); tasks: {_examples()}")
    why = {slug: _candidate(spec, mentions, cues) for slug, spec in TASKS.items()}
    fits = [slug for slug, w in why.items() if w is None]
    if len(fits) == 1:
        return TASKS[fits[0]]
    if fits:
        raise UnknownNameError(f"{text!r} is ambiguous: it fits {', '.join(fits)}; name the task by its "
                               f"slug or say more (e.g. {TASKS[fits[0]].instruction!r})")
    names = {slug: {n for st in spec.steps for n in (st.obj, st.target)} for slug, spec in TASKS.items()}
    close = {slug: sum(any(m.fits(n) for n in names[slug]) for m in mentions) for slug in TASKS}
    near = [f"{slug}: {why[slug]}" for slug in sorted(TASKS, key=lambda k: -close[k])
            if close[slug] and why[slug] != "other cues"]
    hint = f" (closest: {'; '.join(near[:2])})" if near else ""
    raise UnknownNameError(f"{text!r} names no known task{hint}; give a slug or an instruction such as "
                           f"'drop the mug in the bin'; tasks: {_examples()}")


def _matched_task(world: SimWorld, instruction: str) -> TaskSpec | None:
    """The task ``instruction`` matches when the scene has all of its objects, else None."""
    try:
        spec = match_task(instruction)
    except KeyError:
        return None
    names = {n for s in spec.steps for n in (s.obj, s.target)}
    return spec if names <= set(world.objects) else None


__all__ += ["match_task", "match_words"]
