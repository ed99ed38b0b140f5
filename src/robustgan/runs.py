"""Run directories: config.toml, model.safetensors, metrics.jsonl, checkpoint.safetensors,
VERSION, and a lock. Everything on disk is TOML, JSON or safetensors: no pickles.

A checkpoint is one safetensors file: every tensor of the nested training state (networks,
optimizers, RNG states) is a named tensor, and the nesting plus plain values (ints,
floats, strings) is JSON in the file's metadata."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from robustgan.config import Config, from_dict, read_toml, to_toml
from robustgan.errors import ConfigError, RunError
from robustgan.version import __version__

CONFIG, MODEL, METRICS, CHECKPOINT, VERSION, LOCK = (
    "config.toml", "model.safetensors", "metrics.jsonl", "checkpoint.safetensors", "VERSION", "lock")


# ------------------------------------------------------------------ nested state <-> safetensors
def _flatten(obj, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _unflatten(node, tensors: dict):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
        raise RunError("checkpoint metadata is malformed")
    return node


def atomic_write(path: Path, payload: bytes | str) -> None:
    """Write ``payload`` to a temp file, fsync, then rename over ``path``: a crash leaves
    either the old file or the new one, never a torn file; a failed write (full disk)
    leaves the old one and raises RunError."""
    tmp = path.with_name(path.name + ".tmp")
    raw = payload.encode() if isinstance(payload, str) else payload
    try:
        with open(tmp, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only directory...
        tmp.unlink(missing_ok=True)
        kept = "; the previous version is kept" if path.exists() else ""
        raise RunError(f"cannot write {path}: {_reason(err)}{kept}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full (free some space, then resume)"
    return err.strerror or str(err)


def save_state(path: Path, state: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    atomic_write(path, save(tensors, metadata={"state": json.dumps(skeleton)}))


def load_state(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise RunError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    if "state" not in metadata:
        raise RunError(f"{path} has no training state")
    return _unflatten(json.loads(metadata["state"]), tensors)


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was saved at, from its header only."""
    with safe_open(str(path), framework="pt") as handle:
        skeleton = json.loads((handle.metadata() or {})["state"])
    return dict(skeleton["__dict__"])["step"]  # top-level keys and ints stay plain JSON


# ------------------------------------------------------------------ the run directory
class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def resume_command(self) -> str:
        return f"robustgan train --out {self.path} --resume"

    @property
    def is_started(self) -> bool:
        """config.toml is written: ``--resume`` can continue (or restart) this run."""
        return self.file(CONFIG).is_file()

    @property
    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    @property
    def is_complete(self) -> bool:
        return self.file(MODEL).is_file() and self.file("DONE").is_file()

    def create(self, cfg: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.file(CONFIG), to_toml(cfg))
        self.file(VERSION).write_text(__version__ + "\n")

    def config(self) -> Config:
        if not self.file(CONFIG).is_file():
            raise RunError(f"{self.path} is not a run directory (no {CONFIG})")
        try:
            return from_dict(read_toml(self.file(CONFIG)))
        except ConfigError as err:
            raise RunError(f"{self.file(CONFIG)}: {err}") from None

    def save_model(self, model: torch.nn.Module) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(self.file(MODEL), save(state, metadata={"robustgan": __version__}))

    def append_metrics(self, record: dict) -> None:
        try:
            with open(self.file(METRICS), "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise RunError(f"cannot write {self.file(METRICS)}: {_reason(err)}") from None

    def metrics(self) -> list[dict]:
        path = self.file(METRICS)
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write (training redoes that epoch on resume)
        return records

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop records of epochs past ``after_epoch`` (logged before a crash, redone on resume)."""
        kept = [r for r in self.metrics() if r.get("epoch", 0) <= after_epoch]
        atomic_write(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in kept))

    def acquire_lock(self) -> None:
        """Refuse a second process training into this directory. The lock file appears
        whole (hard link of a file already holding our pid), so a crash never leaves an
        empty one; a lock whose process is gone is taken over."""
        lock = self.file(LOCK)
        mine = self.file(f"{LOCK}.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        try:
            for _ in range(3):
                try:
                    os.link(mine, lock)
                    return
                except FileExistsError:
                    try:
                        pid = lock.read_text().strip()
                    except FileNotFoundError:
                        continue  # released meanwhile: try again
                    if pid.isdigit() and _pid_alive(int(pid)):
                        raise RunError(f"{self.path} is in use by process {pid} (remove {lock} if that process "
                                       f"is gone)") from None
                    lock.unlink(missing_ok=True)  # stale: its owner died
            raise RunError(f"could not take the lock {lock}")
        finally:
            mine.unlink(missing_ok=True)

    def release_lock(self) -> None:
        self.file(LOCK).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
