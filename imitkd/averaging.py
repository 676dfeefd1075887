"""Checkpoint averaging: the element-wise mean of the parameters of a run's last N interval checkpoints.

fairseq's speech-to-text recipes average the last checkpoints of a run before decoding; the script that
does it is not part of the fairseq wheel. :func:`average_checkpoints` reads the checkpoints through the
safe loader (``imitkd.checkpoints``) and returns the newest one with its ``model`` replaced by the mean
(computed in float32, stored in each tensor's own dtype; integer buffers are the newest checkpoint's) and
without its optimizer state, which an average has no use for. :func:`interval_checkpoints` lists a save
directory's ``checkpoint_<epoch>_<update>.pt`` files (``--save-interval-updates``) by update, with the
helper and pattern fairseq's trainer uses to prune them (``--keep-interval-updates``).
"""
import sys
from pathlib import Path
from typing import List, Sequence

import torch
from fairseq.checkpoint_utils import checkpoint_paths

from imitkd_data.atomic import atomic_write

from . import checkpoints
from .errors import ImitKDError, path_error

_INTERVAL = r"checkpoint_\d+_(\d+)\.pt"  #: fairseq's interval-checkpoint names (group: the update)


def interval_checkpoints(save_dir: Path, last: int) -> List[Path]:
    """The ``last`` newest interval checkpoints of ``save_dir``, oldest first (fewer if it has fewer)."""
    newest_first = checkpoint_paths(str(save_dir), pattern=_INTERVAL)
    return [Path(p) for p in reversed(newest_first[:last])] if last > 0 else []


def average_checkpoints(paths: Sequence[Path]) -> dict:
    """The newest of ``paths`` (the last) with ``model`` = the mean of every checkpoint's ``model``."""
    if not paths:
        raise ImitKDError("checkpoint averaging: no checkpoints to average")
    total, state = None, None
    for path in paths:
        state = checkpoints.load(str(path), map_location="cpu")
        model = state.get("model") if isinstance(state, dict) else None
        if not isinstance(model, dict):
            raise ImitKDError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
        if total is None:
            total = {k: v.detach().float().clone() if v.is_floating_point() else v for k, v in model.items()}
            first = path
            continue
        if model.keys() != total.keys():
            diff = sorted(set(model) ^ set(total))[0]
            raise ImitKDError(f"{path}: its parameters differ from {first}'s (e.g. {diff}); "
                              "only checkpoints of one model can be averaged")
        for k, v in model.items():
            if v.shape != total[k].shape:
                raise ImitKDError(f"{path}: {k} has shape {tuple(v.shape)}, {first} {tuple(total[k].shape)}")
            if v.is_floating_point():
                total[k] += v.float()
            else:
                total[k] = v
    newest = state["model"]
    state["model"] = {k: (v / len(paths)).to(newest[k].dtype) if newest[k].is_floating_point() else v
                      for k, v in total.items()}
    state.pop("last_optimizer_state", None)
    return state


def save_average(paths: Sequence[Path], output: Path) -> Path:
    """:func:`average_checkpoints` written to ``output`` (atomically: a partial file never has its name)."""
    state = average_checkpoints(paths)
    with atomic_write(output, binary=True) as f:
        torch.save(state, f)
    return Path(output)


def get_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="imitkd-average-checkpoints",
        description="Average the parameters of checkpoints (as fairseq's scripts/average_checkpoints.py).")
    p.add_argument("--inputs", nargs="+", required=True, type=Path,
                   help="checkpoint files, or one save directory with --num-update-checkpoints")
    p.add_argument("--num-update-checkpoints", type=int, default=0,
                   help="average the last N checkpoint_<epoch>_<update>.pt of the directory given as --inputs")
    p.add_argument("--output", required=True, type=Path, help="where to write the averaged checkpoint")
    return p


def check_args(args) -> None:
    """--num-update-checkpoints is not negative; --output can be written as a file."""
    if args.num_update_checkpoints < 0:
        raise ImitKDError(f"--num-update-checkpoints must be >= 1 (0: average the --inputs files), "
                          f"got {args.num_update_checkpoints}")
    if args.output.is_dir():
        raise ImitKDError(f"--output {args.output}: is a directory; name the averaged checkpoint's file")
    if not args.output.parent.is_dir():
        raise ImitKDError(f"--output {args.output}: {args.output.parent} is not a directory")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_args(args)
        if args.num_update_checkpoints:
            if len(args.inputs) != 1:
                raise ImitKDError("--num-update-checkpoints needs exactly one save directory as --inputs")
            if not args.inputs[0].is_dir():
                raise ImitKDError(f"{args.inputs[0]}: no such save directory (--inputs with --num-update-checkpoints)")
            paths = interval_checkpoints(args.inputs[0], args.num_update_checkpoints)
            if len(paths) < args.num_update_checkpoints:
                raise ImitKDError(f"{args.inputs[0]}: {len(paths)} interval checkpoints, "
                                  f"--num-update-checkpoints asks for {args.num_update_checkpoints}")
        else:
            paths = args.inputs
            missing = [p for p in paths if not p.is_file()]
            if missing and missing[0].is_dir():
                raise ImitKDError(f"--inputs {missing[0]}: a directory; pass --num-update-checkpoints N to average "
                                  "its last N interval checkpoints (or name checkpoint files)")
            if missing:
                raise ImitKDError(f"{missing[0]}: no such checkpoint file")
        save_average(paths, args.output)
    except ImitKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a checkpoint that cannot be read, an output that cannot be written
        print(f"error: {path_error(e)}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {args.output}")
    return 0
