"""Training commands: train, sweep."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from robustgan.cli.common import DATA_ROOT, err_console, out_console, parse_eps_list, require, writable
from robustgan.config import NORMS, check_frac, load_config
from robustgan.methods import norm_train
from robustgan.errors import RobustganError
from robustgan.sweep import run_parallel, run_sweep, train_commands
from robustgan.train import fit


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="TOML preset, e.g. configs/pgd-at-digits.toml"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a key: --set method.eps=0.3 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Run directory (default runs/<config name>)"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint"),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", metavar="N", help="Stop after this many epochs (resumable)"),
    data_root: Optional[Path] = DATA_ROOT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines"),
    nproc: int = typer.Option(1, "--nproc", metavar="N", help="Data-parallel processes (runs torchrun --nproc_per_node=N)"),
):
    """Train a model into a run directory.

    Examples:

      robustgan train --config configs/pgd-at-digits.toml --out runs/pgd-digits

      robustgan train -c configs/pgd-at-mnist.toml --data-root ~/data --set method.eps=0.2

      robustgan train --out runs/pgd-digits --resume

      robustgan train -c configs/pgd-at-cifar10.toml --data-root ~/data --nproc 4
    """
    require(nproc >= 1, f"--nproc must be >= 1, got {nproc}")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_with_torchrun(nproc)
    if resume:
        if out is None:
            raise RobustganError("--resume needs --out RUN_DIR")
        fit(None, out, resume=True, quiet=quiet, stop_after=stop_after, data_root=data_root)
        return
    if config is None:
        raise RobustganError("give --config PRESET (see configs/) or --resume --out RUN_DIR")
    cfg = load_config(config, set_)
    writable(out or Path("runs") / config.stem, folder=True)
    fit(cfg, out or Path("runs") / config.stem, quiet=quiet, stop_after=stop_after, data_root=data_root)


def relaunch_with_torchrun(nproc: int) -> None:
    """Run this same ``train`` command under torchrun with ``nproc`` processes on this machine."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "robustgan", *args]
    raise SystemExit(subprocess.run(cmd).returncode)


def sweep(
    config: Path = typer.Option(..., "--config", "-c", metavar="FILE", help="Base preset"),
    eps_t: str = typer.Option("", "--eps-t", metavar="EPS", help="Training eps values (default: the paper's grid for the dataset)"),
    methods: str = typer.Option("", metavar="NAMES", help="Comma-separated methods (default: the config's), e.g. pgd_at,atgan"),
    frac: Optional[float] = typer.Option(None, metavar="FRACTION", help="Also train FracAT variants with this fraction"),
    norm: Optional[str] = typer.Option(None, "--norm", metavar="NORM", help="Train every run in this threat model, "
                                       "linf or l2 (sets method.norm; default: the config's)"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a key of the base config"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="PATH", help="Sweep folder (default runs/sweep-<config>)"),
    data_root: Optional[Path] = DATA_ROOT,
    devices: str = typer.Option("", "--devices", metavar="DEVICES", help="Train one run per device at a time, e.g. cuda:0,cuda:1 "
                                "(cpu allowed); default: one run after another in this process"),
    print_commands: bool = typer.Option(False, "--print-commands", help="Print one `robustgan train ...` line per "
                                        "unfinished run (e.g. for a scheduler's job array) instead of training"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train one run per (method, eps_t); finished runs are skipped, interrupted ones resume.

    Examples:

      robustgan sweep -c configs/atgan-mnist.toml --methods pgd_at,atgan --frac 0.5 --set data.root=~/data

      robustgan sweep -c configs/atgan-digits.toml --eps-t 0.1,0.2,0.3 --methods pgd_at,atgan

      robustgan sweep -c configs/atgan-cifar10.toml --data-root ~/data --devices cuda:0,cuda:1,cuda:2,cuda:3

      robustgan sweep -c configs/atgan-mnist.toml --set data.root=~/data --print-commands > jobs.txt

      robustgan sweep -c configs/pgd-at-digits.toml --norm l2 --eps-t 1,2
    """
    writable(out or Path("runs") / f"sweep-{config.stem}", folder=True)
    if frac is not None:
        check_frac(frac, "--frac")
    require(norm is None or norm in NORMS, f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    cfg = load_config(config, [*set_, *([f"method.norm={norm}"] if norm else [])])
    grid = parse_eps_list(eps_t, "--eps-t", norm_train(cfg)) if eps_t else None
    if data_root is not None:  # recorded in every run's config
        cfg.data.root = str(data_root)
    method_list = [m.strip() for m in methods.split(",") if m.strip()] or None
    out = out or Path("runs") / f"sweep-{config.stem}"
    fracs = [None] if frac is None else [None, frac]
    if print_commands or devices:
        commands = train_commands(cfg, out, grid, method_list, fracs)
        if print_commands:
            for _, args in commands:
                sys.stdout.write(shlex.join(["robustgan", *args]) + "\n")
            return
        device_list = [d.strip() for d in devices.split(",") if d.strip()]
        require(bool(device_list), "--devices needs at least one device, e.g. cuda:0,cuda:1")
        run_parallel(commands, device_list, out, log=lambda m: err_console.print(m))
        out_console.print(f"{len(commands)} runs trained in {out}; plot them with: robustgan curve {out}/*")
        return
    runs = run_sweep(cfg, out, grid, method_list, fracs, quiet, log=lambda m: err_console.print(m))
    out_console.print(f"{len(runs)} runs in {out}; plot them with: robustgan curve {out}/*")
