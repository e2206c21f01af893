"""``edge-calib``: hand-eye calibration and calibration-file tools.

    edge-calib handeye --samples DIR --out calib.toml [--method park]
    edge-calib show FILE
    edge-calib check FILE [--max-residual-mm 5]
    edge-calib board --out board.png [--px-per-m 4000]

``DIR/samples.toml`` describes the session (see docs/calibration.md)::

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
from pathlib import Path

import numpy as np

from ..config import ConfigError, from_dict
from ..contracts import Intrinsics, check_transform
from . import toml_io
from .board import BoardConfig, detect_board_pose, render_board
from .calib_file import CameraCalibration, Provenance, utc_now_iso
from .handeye import METHODS, calibrate_hand_eye

log = logging.getLogger("edge-calib")


def _console():
    from rich.console import Console

    return Console()


def load_samples(directory: Path) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """Read ``samples.toml``; detect the board where a sample gives an image. Returns
    (manifest, T_base_ee (N,4,4), T_cam_target (N,4,4), per-sample notes)."""
    manifest_path = directory / "samples.toml"
    data = toml_io.read(manifest_path)
    samples = data.get("samples", [])
    if not samples:
        raise ConfigError(f"{manifest_path}: no [[samples]] entries")
    board = from_dict(BoardConfig, data["board"], prefix="board.") if "board" in data else None
    intr = None
    if "intrinsics" in data:
        d = dict(data["intrinsics"])
        intr = Intrinsics(**{**d, "coeffs": np.asarray(d.get("coeffs", np.zeros(5)), dtype=np.float64)})
    A, B, notes = [], [], []
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
        elif "image" in s:
            if board is None or intr is None:
                raise ConfigError(f"{manifest_path}: samples with images need [board] and [intrinsics] tables")
            b = _detect(directory / s["image"], intr, board)
            if b is None:
                log.warning("%s: board not found in %s; sample skipped", key, s["image"])
                notes.append(f"skipped: no board in {s['image']}")
                continue
            notes.append(f"detected in {s['image']}")
        else:
            raise ConfigError(f"{key}: needs 'image' or 'T_cam_target'")
        A.append(a)
        B.append(b)
    return data, np.array(A), np.array(B), notes


def _detect(path: Path, intr: Intrinsics, board: BoardConfig) -> np.ndarray | None:
    import imageio.v3 as iio

    try:
        img = iio.imread(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read image ({e})") from e
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    pose = detect_board_pose(np.ascontiguousarray(img), intr, board)
    return None if pose is None else pose.T_cam_target


def cmd_handeye(args) -> int:
    directory = Path(args.samples)
    data, A, B, _ = load_samples(directory)
    mount = data.get("mount", "fixed")
    res = calibrate_hand_eye(A, B, mount=mount, method=args.method)
    intr = None
    if "intrinsics" in data:
        d = dict(data["intrinsics"])
        intr = Intrinsics(**{**d, "coeffs": np.asarray(d.get("coeffs", np.zeros(5)), dtype=np.float64)})
    cal = CameraCalibration(T=res.T, mount=mount, camera=str(data.get("camera", "")), intrinsics=intr,
                            provenance=Provenance(date=utc_now_iso(), method=res.method, samples=res.n_samples,
                                                  residual_rot_deg=res.rms_rot_deg, residual_trans_m=res.rms_trans_m,
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
    _console().print(t)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-calib", description="Camera-to-robot calibration tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("handeye", help="solve hand-eye calibration from a samples directory")
    h.add_argument("--samples", required=True, help="directory with samples.toml (+ images)")
    h.add_argument("--out", required=True, help="calibration TOML to write")
    h.add_argument("--method", default="park", choices=METHODS)
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
    b.add_argument("--squares-x", type=int, default=5)
    b.add_argument("--squares-y", type=int, default=7)
    b.add_argument("--square-length", type=float, default=0.04)
    b.add_argument("--marker-length", type=float, default=0.03)
    b.add_argument("--dictionary", default="DICT_5X5_100")
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


if __name__ == "__main__":
    sys.exit(main())
