"""``edge-calib``: hand-eye calibration and calibration-file tools.

    edge-calib collect --config SETUP --out DIR [--mode auto|manual] [--poses 15] [--yes]
    edge-calib handeye --samples DIR --out calib.toml [--method park] [--no-refine]
    edge-calib show FILE
    edge-calib check FILE [--max-residual-mm 5]
    edge-calib board --out board.png [--px-per-m 4000]

``DIR/samples.toml`` describes the session (see docs/calibration.md); ``collect`` writes it::

    mount = "fixed"                 # or "wrist"
    camera = "realsense:123456789"
    [board]      kind = "charuco"  squares_x = 5  squares_y = 7  square_length = 0.04 ...
    [intrinsics] width = 640 ... (the colour stream's)
    [[samples]]  image = "000.png"   T_base_ee = [[...]]     # or T_cam_target = [[...]] instead of image
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError, from_dict
from ..contracts import Intrinsics, check_transform
from ..errors import EdgebridgeError
from . import toml_io
from .board import BoardConfig, camera_matrix, detect_board_pose, render_board
from .calib_file import CameraCalibration, Provenance, utc_now_iso
from .handeye import METHODS, calibrate_hand_eye, refine_reprojection

log = logging.getLogger("edge-calib")


def _console():
    from rich.console import Console

    return Console()


@dataclass
class Session:
    """A read ``samples.toml``: the manifest, per kept sample T_base_ee (N,4,4) and T_cam_target (N,4,4),
    the board corners each image gave (None for a sample given as T_cam_target), one note per sample."""

    data: dict
    T_base_ee: np.ndarray
    T_cam_target: np.ndarray
    observations: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    intrinsics: Intrinsics | None = None


def _intrinsics(data: dict) -> Intrinsics | None:
    if "intrinsics" not in data:
        return None
    d = dict(data["intrinsics"])
    return Intrinsics(**{**d, "coeffs": np.asarray(d.get("coeffs", np.zeros(5)), dtype=np.float64)})


def read_session(directory: Path) -> Session:
    """Read ``samples.toml``; detect the board where a sample gives an image."""
    manifest_path = directory / "samples.toml"
    data = toml_io.read(manifest_path)
    samples = data.get("samples", [])
    if not samples:
        raise ConfigError(f"{manifest_path}: no [[samples]] entries")
    board = from_dict(BoardConfig, data["board"], prefix="board.") if "board" in data else None
    intr = _intrinsics(data)
    A, B, obs, notes = [], [], [], []
    for i, s in enumerate(samples):
        key = f"{manifest_path.name}: samples[{i}]"
        if "T_base_ee" not in s:
            raise ConfigError(f"{key}.T_base_ee: required (the arm's end-effector pose for this sample)")
        try:
            a = check_transform(f"{key}.T_base_ee", s["T_base_ee"])
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if "T_cam_target" in s:
            b = check_transform(f"{key}.T_cam_target", s["T_cam_target"])
            notes.append("given")
            obs.append(None)
        elif "image" in s:
            if board is None or intr is None:
                raise ConfigError(f"{manifest_path}: samples with images need [board] and [intrinsics] tables")
            pose = _detect(directory / s["image"], intr, board)
            if pose is None:
                log.warning("%s: board not found in %s; sample skipped", key, s["image"])
                notes.append(f"skipped: no board in {s['image']}")
                continue
            b = pose.T_cam_target
            notes.append(f"detected in {s['image']}")
            obs.append((pose.object_points, pose.image_points))
        else:
            raise ConfigError(f"{key}: needs 'image' or 'T_cam_target'")
        A.append(a)
        B.append(b)
    return Session(data, np.array(A), np.array(B), obs, notes, intr)


def load_samples(directory: Path) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """(manifest, T_base_ee (N,4,4), T_cam_target (N,4,4), per-sample notes) of ``samples.toml``."""
    s = read_session(directory)
    return s.data, s.T_base_ee, s.T_cam_target, s.notes


def _detect(path: Path, intr: Intrinsics, board: BoardConfig):
    import imageio.v3 as iio

    try:
        img = iio.imread(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read image ({e})") from e
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return detect_board_pose(np.ascontiguousarray(img), intr, board)


def solve_session(session: Session, *, method: str = "park", refine: bool = True):
    """The closed-form solution of ``method``, refined on the board corners when every kept sample came
    from an image with intrinsics (``refine``): (result, closed-form result)."""
    mount = session.data.get("mount", "fixed")
    closed = calibrate_hand_eye(session.T_base_ee, session.T_cam_target, mount=mount, method=method)
    if not refine or session.intrinsics is None or any(o is None for o in session.observations):
        return closed, closed
    K, dist = camera_matrix(session.intrinsics)
    return refine_reprojection(closed, session.T_base_ee, session.T_cam_target, session.observations, K, dist), closed


def cmd_handeye(args) -> int:
    directory = Path(args.samples)
    session = read_session(directory)
    res, _ = solve_session(session, method=args.method, refine=not args.no_refine)
    data = session.data
    cal = CameraCalibration(T=res.T, mount=res.mount, camera=str(data.get("camera", "")), intrinsics=session.intrinsics,
                            provenance=Provenance(date=utc_now_iso(), method=res.method, samples=res.n_samples,
                                                  residual_rot_deg=res.rms_rot_deg, residual_trans_m=res.rms_trans_m,
                                                  reprojection_rms_px=res.reprojection_rms_px,
                                                  tool="edge-calib handeye", notes=f"samples from {directory}"))
    cal.save(args.out)
    _report(res)
    print(f"wrote {args.out}")
    return 0


def _report(res) -> None:
    from rich.table import Table

    t = Table(title=f"hand-eye residuals ({res.mount} camera, method {res.method})")
    t.add_column("sample", justify="right")
    t.add_column("rotation (deg)", justify="right")
    t.add_column("translation (mm)", justify="right")
    for i, (r, d) in enumerate(res.residuals):
        t.add_row(str(i), f"{r:.4f}", f"{d * 1e3:.3f}")
    t.add_row("RMS", f"{res.rms_rot_deg:.4f}", f"{res.rms_trans_m * 1e3:.3f}", style="bold")
    con = _console()
    con.print(t)
    if res.reprojection_rms_px is not None:
        con.print(f"board corners reprojected through the solution: RMS {res.reprojection_rms_px:.3f} px")


def cmd_show(args) -> int:
    from rich.table import Table

    cal = CameraCalibration.load(args.file)
    con = _console()
    con.print(f"[bold]{args.file}[/bold]: {cal.mount} camera {cal.camera or '(unnamed)'}")
    t = Table(title=cal.transform_key)
    for _ in range(4):
        t.add_column(justify="right")
    for row in cal.T:
        t.add_row(*[f"{v: .6f}" for v in row])
    con.print(t)
    from scipy.spatial.transform import Rotation

    rpy = np.degrees(Rotation.from_matrix(cal.T[:3, :3]).as_euler("xyz"))
    con.print(f"position (m): {np.round(cal.T[:3, 3], 4).tolist()}   rpy xyz (deg): {np.round(rpy, 2).tolist()}")
    if cal.intrinsics is not None:
        i = cal.intrinsics
        con.print(f"intrinsics: {i.width}x{i.height} fx={i.fx:.2f} fy={i.fy:.2f} cx={i.cx:.2f} cy={i.cy:.2f} "
                  f"model={i.model}")
    for k, v in vars(cal.provenance).items():
        if v not in (None, ""):
            con.print(f"{k}: {v}")
    return 0


def cmd_check(args) -> int:
    cal = CameraCalibration.load(args.file)  # validates format and transform
    r = cal.provenance.residual_trans_m
    if args.max_residual_mm is not None and r is not None and r * 1e3 > args.max_residual_mm:
        print(f"{args.file}: FAIL residual {r * 1e3:.2f} mm > {args.max_residual_mm} mm; recalibrate", file=sys.stderr)
        return 1
    if not cal.provenance.date:
        print(f"{args.file}: warning: no provenance date", file=sys.stderr)
    print(f"{args.file}: OK ({cal.mount} camera, {cal.transform_key} valid"
          + (f", residual {r * 1e3:.2f} mm" if r is not None else "") + ")")
    return 0


def cmd_board(args) -> int:
    import imageio.v3 as iio

    cfg = BoardConfig(squares_x=args.squares_x, squares_y=args.squares_y, square_length=args.square_length,
                      marker_length=args.marker_length, dictionary=args.dictionary)
    iio.imwrite(args.out, render_board(cfg, px_per_m=args.px_per_m, margin_px=int(0.01 * args.px_per_m)))
    print(f"wrote {args.out}: print at {args.px_per_m / 39.37:.0f} dpi, then measure the squares")
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 1280x960, got {text!r}") from None
    return w, h


def cmd_collect(args) -> int:
    from .collect import CollectConfig, Collector
    from .setup_rig import open_rig

    board = BoardConfig(squares_x=args.squares_x, squares_y=args.squares_y, square_length=args.square_length,
                        marker_length=args.marker_length, dictionary=args.dictionary)
    cfg = CollectConfig(mode=args.mode, poses=args.poses, seed=args.seed, max_tilt_deg=args.max_tilt,
                        speed_fraction=args.speed, torque_off=not args.no_torque_off)
    con = _console()
    if args.mode == "auto" and not args.yes:
        answer = input(f"the arm of {args.config} will move by itself through {args.poses} poses around where it "
                       f"stands, at {args.speed:.0%} of its joint limits; keep clear, hand on the stop. Go? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("edge-calib collect: nothing moved", file=sys.stderr)
            return 1
    if args.mode == "manual" and not args.yes and not args.no_torque_off:
        input("torque goes off on every joint: hold the arm so that it cannot fall, then press Enter ")
    rig = open_rig(args.config, board, seed=args.seed, task=args.task, capture_size=args.capture_size)
    try:
        for note in rig.notes:
            con.print(note)
        prompt = (lambda text: "") if args.yes else input
        res = Collector(rig, board, cfg, args.out, say=con.print, prompt=prompt).run()
    finally:
        rig.close()
    con.print(f"wrote {res.samples} samples to {res.directory / 'samples.toml'}"
              + (f" ({len(res.skipped)} skipped)" if res.skipped else ""))
    con.print(f"next: edge-calib handeye --samples {res.directory} --out calib.toml")
    return 0


def _board_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--squares-x", type=int, default=5)
    p.add_argument("--squares-y", type=int, default=7)
    p.add_argument("--square-length", type=float, default=0.04, help="measured on the print (m)")
    p.add_argument("--marker-length", type=float, default=0.03, help="measured on the print (m)")
    p.add_argument("--dictionary", default="DICT_5X5_100")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-calib", description="Camera-to-robot calibration tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("collect", help="record hand-eye samples: the arm moves the board (auto) or you do (manual)")
    k.add_argument("--config", required=True, help="robot setup: a TOML file or a shipped name (sim_panda)")
    k.add_argument("--out", required=True, help="directory to write samples.toml and the images to")
    k.add_argument("--mode", choices=("auto", "manual"), default="auto",
                   help="auto: the arm moves through planned poses; manual: torque off, you move it, Enter per pose")
    k.add_argument("--poses", type=int, default=15, help="samples to take (10-20 with varied rotations)")
    k.add_argument("--yes", action="store_true", help="no questions: auto starts at once, manual takes a frame "
                                                      "per pose without waiting for Enter")
    k.add_argument("--speed", type=float, default=0.15, help="fraction of the joint velocity/acceleration limits")
    k.add_argument("--max-tilt", type=float, default=35.0, help="largest board tilt from face-on (deg)")
    k.add_argument("--no-torque-off", action="store_true",
                   help="manual: leave torque alone (the arm is in its own hand-guiding mode)")
    k.add_argument("--capture-size", type=_size, default=None, metavar="WxH",
                   help="colour frames of this size while calibrating (sim camera; RealSense width/height)")
    k.add_argument("--seed", type=int, default=0, help="sim: the world of this episode seed; the pose plan's seed")
    k.add_argument("--task", default="put_cup_in_tray", help="sim: the scene of this task")
    _board_args(k)
    k.set_defaults(fn=cmd_collect)
    h = sub.add_parser("handeye", help="solve hand-eye calibration from a samples directory")
    h.add_argument("--samples", required=True, help="directory with samples.toml (+ images)")
    h.add_argument("--out", required=True, help="calibration TOML to write")
    h.add_argument("--method", default="park", choices=METHODS)
    h.add_argument("--no-refine", action="store_true",
                   help="keep the closed-form solution (default: refined on the board corners of every image)")
    h.set_defaults(fn=cmd_handeye)
    s = sub.add_parser("show", help="print a calibration file")
    s.add_argument("file")
    s.set_defaults(fn=cmd_show)
    c = sub.add_parser("check", help="validate a calibration file (exit 1 if invalid)")
    c.add_argument("file")
    c.add_argument("--max-residual-mm", type=float, default=None)
    c.set_defaults(fn=cmd_check)
    b = sub.add_parser("board", help="render a ChArUco board image to print")
    b.add_argument("--out", required=True)
    _board_args(b)
    b.add_argument("--px-per-m", type=float, default=4000.0)
    b.set_defaults(fn=cmd_board)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"edge-calib {args.cmd}: {e}", file=sys.stderr)
        return 2
    except EdgebridgeError as e:  # a device or the session (CollectError, DeviceFaultError, SafetyViolation)
        print(f"edge-calib {args.cmd}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
