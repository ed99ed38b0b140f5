"""`robustgan sweep`: one run per (method, eps_t), resumable. Methods share the config's
data, backbone, optimizer and attack settings; keys a method does not have are dropped
(so `pgd_at` and `atgan` from one ATGAN preset differ only in the method, as in paper 000
where each baseline is the discriminator's backbone without the GAN)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from robustgan.config import Config, from_dict, method_config_class, to_dict, to_toml
from robustgan.errors import RobustganError
from robustgan.eps import format_eps, grid_for
from robustgan.methods import eps_train, method_class, norm_train
from robustgan.runs import RunDir
from robustgan.train import ensure_trained

REQUESTED = "requested.toml"  # a sweep run's config before it starts (the run writes config.toml itself)
LOG = "train.log"  # a run's output under `sweep --devices`


def run_name(label: str, eps_t: float, norm: str = "linf") -> str:
    """e.g. "pgd_at-frac-eps0.3": the method's label (``Method.label``) and eps_t ("pgd_at-l2-eps2"
    in L2)."""
    return f"{label}{'' if norm == 'linf' else '-' + norm}-eps{format_eps(eps_t).replace('/', '_')}"


def variant(cfg: Config, method: str, eps_t: float, frac: float | None) -> Config:
    raw = to_dict(cfg)
    fields = {f.name for f in dataclasses.fields(method_config_class(method))}
    raw["method"] = {k: v for k, v in raw["method"].items() if k in fields and v is not None}
    raw["method"]["name"] = method
    if "eps" in fields:
        raw["method"]["eps"] = eps_t
    if frac is not None and "frac" in fields:
        raw["method"]["frac"] = frac
    return from_dict(raw)


def plan(cfg: Config, eps_t: list[float] | None, methods: list[str] | None, fracs: list[float | None]) -> list:
    if not eps_t:  # the paper's grid in the config's norm (the literature's in L2); none: the config's eps
        try:
            eps_t = grid_for(cfg.data.name, "eps_t", norm_train(cfg))
        except RobustganError:
            eps_t = [eps_train(cfg)]
    methods = methods or [cfg.method.name]
    out = []
    for method in methods:
        for frac in fracs:
            for e in eps_t:
                v = variant(cfg, method, e, frac)
                out.append((run_name(method_class(method).label(v), e, norm_train(v)), v))
    return out


def run_sweep(cfg: Config, out: Path, eps_t=None, methods=None, fracs=(None,), quiet=False, log=print) -> list[Path]:
    runs = []
    for name, v in plan(cfg, eps_t, methods, list(fracs)):
        path = Path(out) / name
        run = RunDir(path)
        runs.append(path)
        if run.is_complete:
            log(f"{name}: done, skipped")
            continue
        log(f"{name}: {'resuming' if run.is_started else 'training'}")
        ensure_trained(v, path, quiet=quiet)
    return runs


def train_commands(cfg: Config, out: Path, eps_t=None, methods=None, fracs=(None,)) -> list[tuple[str, list[str]]]:
    """(run name, ``robustgan train`` arguments) for every run not finished yet: a resume
    for a started run, else training from the run's config, written to <run>/requested.toml
    (inside the run directory, so ``<out>/*`` stays the sweep's runs)."""
    commands = []
    for name, v in plan(cfg, eps_t, methods, list(fracs)):
        path = Path(out) / name
        run = RunDir(path)
        if run.is_complete:
            continue
        if run.is_started:
            commands.append((name, ["train", "--out", str(path), "--resume", "--quiet"]))
            continue
        path.mkdir(parents=True, exist_ok=True)
        run.file(REQUESTED).write_text(to_toml(v))
        commands.append((name, ["train", "-c", str(run.file(REQUESTED)), "--out", str(path), "--quiet"]))
    return commands


def device_env(device: str, env: dict | None = None) -> dict:
    """The environment of a run on ``device``: only that GPU visible for cuda:N (N counts the
    GPUs this process sees, so a CUDA_VISIBLE_DEVICES already set is respected; the run's
    train.device 'auto' or 'cuda' then means that GPU), none for cpu."""
    env = dict(os.environ if env is None else env)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env
    index = device.partition(":")[2] or "0"
    if not device.startswith("cuda") or not index.isdigit():
        raise RobustganError(f"--devices: {device!r} is not cpu, cuda or cuda:N")
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or None
    if visible is not None and int(index) >= len(visible):
        raise RobustganError(f"--devices: {device} but CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} shows "
                             f"{len(visible)} GPU(s)")
    env["CUDA_VISIBLE_DEVICES"] = visible[int(index)] if visible else index
    return env


def run_parallel(commands: list[tuple[str, list[str]]], devices: list[str], out: Path, log=print) -> None:
    """One training process per device at a time (each run's output appended to
    <run>/train.log); a failed run is named with its log at the end, after the others have
    finished. Ctrl-C (or any error here) stops the running processes."""
    envs = [device_env(d) for d in devices]
    queue, running, failed = list(commands), {}, []  # running: device index -> (name, process, log file)
    try:
        while queue or running:
            for i in [i for i in range(len(devices)) if i not in running][:len(queue)]:
                name, args = queue.pop(0)
                log_path = RunDir(Path(out) / name).file(LOG)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_file = open(log_path, "a")
                log(f"{name}: training on {devices[i]} (log: {log_path})")
                running[i] = (name, subprocess.Popen([sys.executable, "-m", "robustgan", *args], env=envs[i],
                                                     stdout=log_file, stderr=subprocess.STDOUT), log_file)
            for i, (name, process, log_file) in list(running.items()):
                if process.poll() is not None:
                    log_file.close()
                    del running[i]
                    if process.returncode != 0:
                        failed.append(f"{name} (exit {process.returncode}, see {log_file.name})")
                    else:
                        log(f"{name}: done")
            time.sleep(0.2)
    finally:
        for name, process, log_file in running.values():
            process.terminate()
            process.wait()
            log_file.close()
    if failed:
        raise RobustganError(f"{len(failed)} sweep run(s) failed: {'; '.join(failed)}")
