"""The one training loop. It knows nothing about any method: it builds the method named by
the config, feeds it on-device batches, sets learning rates, evaluates, logs, checkpoints
and resumes."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustgan import data, distributed
from robustgan.config import Config, DataConfig
from robustgan.errors import Diverged, Interrupted, RunError
from robustgan.evaluate import robust_accuracy
from robustgan.methods import Geometry, method_class
from robustgan.runs import CHECKPOINT, RunDir, checkpoint_step, load_state, save_state

console = Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={name} but CUDA is not available; use train.device=cpu or auto")
    return device


def autocast_for(amp: str, device: torch.device):
    """bf16 autocast on CUDA when asked or 'auto'; off on CPU unless 'bf16' is forced."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use else nullcontext


def geometry_for(dcfg: DataConfig) -> Geometry:
    meta = data.info(dcfg.name)
    return Geometry(meta.channels, meta.image_size, meta.num_classes)


def apply_fast_paths(method, cfg: Config) -> None:
    """``train.channels_last`` and ``train.compile`` on every network of the method (in place:
    state_dict keys unchanged). The benchmarks call this too, so they time the training path."""
    for network in method.networks().values():
        if cfg.train.channels_last:
            network.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            network.compile()


def load_split(dcfg: DataConfig, split: str, root=None):
    x, y = data.load(dcfg.name, root if root is not None else dcfg.root, split)
    if split == "train" and dcfg.train_limit:
        x, y = x[:dcfg.train_limit], y[:dcfg.train_limit]
    return x, y


class Logger:
    """metrics.jsonl always; the console unless quiet; TensorBoard when asked."""

    def __init__(self, run: RunDir, quiet: bool, tensorboard: bool, writes: bool = True):
        self.run, self.quiet, self.writer, self.writes = run, quiet or not writes, None, writes
        if tensorboard and writes:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RunError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(run.file("tb")))

    def log(self, record: dict) -> None:
        if not self.writes:
            return
        self.run.append_metrics(record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])
        if not self.quiet:
            shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            console.print(shown)

    def message(self, text: str) -> None:
        if not self.quiet:
            console.print(text)


class EpochStats:
    """The running sums of one epoch's step metrics, kept on the device as one vector (a
    handful of kernels per step, no host sync), with the first step at which each metric
    was non-finite (-1 while finite)."""

    def __init__(self, device: torch.device, sums=None, steps=0, images=0, seconds=0.0):
        self.device = device
        self.keys: list[str] = []
        self.total = torch.zeros(0, device=device)
        self.first_bad = torch.zeros(0, dtype=torch.long, device=device)
        self.steps, self.images, self.seconds = steps, images, seconds
        if sums:
            self._rekey(list(sums))
            self.total = torch.stack([sums[k].to(device, torch.float32) for k in self.keys])

    def _rekey(self, keys: list[str]) -> None:
        """Extend the vectors to new metric names (a method may add one mid-epoch)."""
        new = [k for k in keys if k not in self.keys]
        if new:
            self.keys = self.keys + new
            self.total = torch.cat([self.total, torch.zeros(len(new), device=self.device)])
            self.first_bad = torch.cat([self.first_bad, torch.full((len(new),), -1, dtype=torch.long,
                                                                   device=self.device)])

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, self.total.unbind())) if self.keys else {}

    def add(self, metrics: dict[str, torch.Tensor], step: int, images: int) -> None:
        if list(metrics) != self.keys:
            self._rekey(list(metrics))
            metrics = {k: metrics.get(k, torch.zeros((), device=self.device)) for k in self.keys}
        values = torch.stack([v.detach().float() for v in metrics.values()])
        self.total += values
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(values), step, self.first_bad)
        self.steps, self.images = self.steps + 1, self.images + images

    def check_finite(self, epoch: int, run: RunDir) -> None:
        """Raise Diverged naming the earliest non-finite metric (a host sync). Called before
        every checkpoint, so a checkpoint never holds a diverged state."""
        bad = {k: v for k, v in zip(self.keys, self.first_bad.tolist()) if v >= 0}
        if distributed.any_rank(bool(bad), self.device) and not bad:
            raise Diverged(f"training diverged on another rank (epoch {epoch + 1}); {run.path} keeps its last good "
                           f"checkpoint")
        if bad:
            term = min(bad, key=bad.get)
            kept = (f"{run.path} keeps the last good checkpoint (step {checkpoint_step(run.file(CHECKPOINT))})"
                    if run.has_checkpoint else "no checkpoint had been written yet")
            raise Diverged(f"training diverged: {term} became non-finite at step {bad[term]} (epoch {epoch + 1}); "
                           f"{kept}. Lower optim.lr (or check the data) and train a new run")

    def averages(self, across_ranks: bool = True) -> dict[str, float]:
        """Averages so far, over every rank's steps (one all-reduce when data-parallel) or
        this rank's only; one host sync."""
        total, steps = self.total, self.steps
        if across_ranks:
            total, steps = distributed.sum_across_ranks(total), steps * distributed.world().size
        return dict(zip(self.keys, (total / max(1, steps)).tolist()))

    def state_dict(self) -> dict:
        return {"sums": self.sums, "steps": self.steps, "images": self.images, "seconds": self.seconds}


class StopFlag:
    """Ctrl-C asks the loop to stop after the current step (it then saves a checkpoint);
    a second Ctrl-C aborts at once. Installed only in the main thread."""

    def __init__(self, message):
        self.requested, self.message, self.previous = False, message, None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.message("stopping after this step to save a checkpoint (Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def evaluate_heldout(method, cfg: Config, x_test, y_test, device) -> dict:
    model = method.defended_model()
    was_training = model.training
    limit = cfg.train.eval_limit or len(y_test)
    x, y = x_test[:limit], y_test[:limit]
    result = {"split": "test", "n": len(y), "clean_acc": robust_accuracy(model, x, y, attack="none", device=device,
                                                                           batch_size=cfg.train.batch_size * 2)}
    if cfg.train.eval_eps > 0:
        result[f"pgd{cfg.train.eval_steps}_acc"] = robust_accuracy(
            model, x, y, attack="pgd", eps=cfg.train.eval_eps, steps=cfg.train.eval_steps, device=device,
            batch_size=cfg.train.batch_size * 2, num_classes=method.geometry.num_classes)
        result["eval_eps"] = cfg.train.eval_eps
    model.train(was_training)
    return result


def set_learning_rates(method, cfg: Config, epoch: int, epochs: int) -> float:
    factor = cfg.schedule.factor(epoch, epochs)
    for opt in method.scheduled_optimizers():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
    return factor


def _progress(quiet: bool):
    if quiet:
        return None
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, transient=True)


def fit_clean_subrun(cfg: Config, out: Path, epochs: int, seed: int, quiet: bool = True, data_root=None) -> Path:
    """Train (or finish) a `standard` run of ``cfg``'s data, backbone and optimizer into
    ``out``: ATGAN's loss network and the transfer check's surrogate. Returns ``out``."""
    from robustgan.config import from_dict, to_dict

    run = RunDir(out)
    if not run.is_complete:
        raw = to_dict(cfg)
        raw["method"] = {"name": "standard"}
        raw["schedule"] = {}
        raw["train"] = {**raw["train"], "epochs": epochs, "steps": 0, "seed": seed}
        sub = from_dict({k: {f: v for f, v in section.items() if v is not None} for k, section in raw.items()})
        started = run.file("config.toml").is_file()
        fit(None if started else sub, out, resume=started, quiet=quiet, data_root=data_root)
    return Path(out)


def fit(cfg: Config | None, out: str | Path, *, resume: bool = False, quiet: bool = False,
        stop_after: int | None = None, data_root: str | None = None) -> RunDir:
    """Train ``cfg`` into run directory ``out``; with ``resume`` continue from its
    checkpoint (using the run's saved config). ``stop_after`` ends this invocation after
    that many epochs (the run stays resumable). Returns the run directory."""
    run = RunDir(out)
    if resume:
        if not run.file("config.toml").is_file():
            raise RunError(f"nothing to resume: {run.path} has no config.toml")
        cfg = run.config()
        # stopped before its first checkpoint: nothing to restore, start over with its config
        resume = run.has_checkpoint
        if not resume and distributed.world().is_main:
            run.file("metrics.jsonl").unlink(missing_ok=True)
    elif run.has_checkpoint:
        raise RunError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
    assert cfg is not None
    if data_root is not None:  # recorded in config.toml, so sub-runs, resume and eval find the files
        cfg.data.root = str(data_root)
    here = distributed.setup(resolve_device(cfg.train.device))
    if here.is_main:  # rank 0 owns the directory and its lock
        run.path.mkdir(parents=True, exist_ok=True)
        run.acquire_lock()
    try:
        return _fit_locked(cfg, run, resume, quiet, stop_after, data_root)
    finally:
        if here.is_main:
            run.release_lock()
        distributed.barrier()  # sub-runs (ATGAN's loss network) are read by every rank next


def _fit_locked(cfg: Config, run: RunDir, resume: bool, quiet: bool, stop_after, data_root) -> RunDir:
    here = distributed.world()
    writes = here.is_main  # only rank 0 touches the run directory
    torch.manual_seed(cfg.train.seed)
    device = distributed.device_for(resolve_device(cfg.train.device), here)
    x_train, y_train = load_split(cfg.data, "train", data_root)
    x_test, y_test = load_split(cfg.data, "test", data_root)
    geometry = geometry_for(cfg.data)
    method = method_class(cfg.method.name)(cfg, geometry, device)
    distributed.broadcast_state(method.networks().values())
    apply_fast_paths(method, cfg)
    if here.enabled:  # each rank's own stream for random starts, noise...
        torch.manual_seed(cfg.train.seed + 7919 * here.rank)
    batcher = data.Batcher(x_train, y_train, cfg.train.batch_size, device=device, flip=cfg.data.flip,
                           shift=cfg.data.shift, seed=cfg.train.seed, rank=here.rank, world_size=here.size,
                           channels_last=cfg.train.channels_last)
    epochs = cfg.train.epochs if not cfg.train.steps else math.ceil(cfg.train.steps / len(batcher))
    total_steps = cfg.train.steps or epochs * len(batcher)
    logger = Logger(run, quiet, cfg.train.tensorboard, writes)
    start_epoch, global_step, partial = 0, 0, None
    if resume:
        state = load_state(run.file(CHECKPOINT))
        method.load_state_dict(state["method"])
        batcher.load_state_dict(state["batcher"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch, global_step, partial = state["epoch"] + 1, state["step"], state.get("partial_epoch")
        if here.enabled:  # rank 0's saved streams are re-split per rank
            torch.manual_seed(cfg.train.seed + 7919 * here.rank + global_step)
        if writes:
            run.truncate_metrics(state["epoch"] + 1)  # records count epochs from 1
        logger.message(f"resuming {run.path} at epoch {start_epoch + 1}/{epochs}, step {global_step}")
    else:
        if writes:
            run.create(cfg)
        try:
            method.prepare(run.path, logger.message, quiet or not writes)
        except Interrupted:  # inside a sub-run (ATGAN's loss network): resuming this run resumes it
            raise Interrupted(f"interrupted while preparing {run.path}; checkpoint saved. "
                              f"Resume with: {run.resume_command}") from None
    autocast = autocast_for(cfg.train.amp, device)
    progress = _progress(quiet or not writes)
    every = cfg.train.checkpoint_every
    done_this_call = 0

    def checkpoint(epoch: int, stats: EpochStats | None) -> None:
        """Epoch ``epoch`` finished (stats None), or ``stats.steps`` steps into it (rank 0 only)."""
        if not writes:
            return
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        state = {"epoch": epoch if stats is None else epoch - 1, "step": global_step, "method": method.state_dict(),
                 "batcher": batcher.state_dict(), "rng": rng}
        if stats is not None:
            state["partial_epoch"] = stats.state_dict()
        save_state(run.file(CHECKPOINT), state)

    with progress or nullcontext(), StopFlag(logger.message) as stop:
        for epoch in range(start_epoch, epochs):
            lr_factor = set_learning_rates(method, cfg, epoch, epochs)
            method.on_epoch_start(epoch, epochs)
            stats = EpochStats(device, **(partial or {}))
            partial = None
            remaining = min(len(batcher) - stats.steps, total_steps - global_step)
            task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=len(batcher), completed=stats.steps,
                                     info="") if progress else None
            started = time.perf_counter()
            for x, y in itertools.islice(batcher, remaining):
                with autocast():
                    metrics = method.step(x, y)
                global_step += 1
                stats.add(metrics, global_step, len(y))
                if progress is not None:
                    progress.advance(task)
                at_log = global_step % cfg.train.log_every == 0
                if at_log:
                    stats.check_finite(epoch, run)
                    if progress is not None:
                        shown = " ".join(f"{k}={v:.3f}" for k, v in stats.averages(across_ranks=False).items())
                        rate = here.size * stats.images / (stats.seconds + time.perf_counter() - started)
                        progress.update(task, info=f"{shown} {rate:.0f} img/s")
                # data-parallel ranks agree on stopping (a collective) at log steps only
                stop_now = (at_log or not here.enabled) and distributed.any_rank(stop.requested, device)
                if batcher.position != 0 and (stop_now or (every and global_step % every == 0)):
                    stats.check_finite(epoch, run)
                    stats.seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    checkpoint(epoch, stats)
                    if stop_now:
                        raise Interrupted(f"interrupted at step {global_step} (epoch {epoch + 1}); checkpoint saved. "
                                          f"Resume with: {run.resume_command}")
            stats.seconds += time.perf_counter() - started
            stats.check_finite(epoch, run)
            if progress is not None:
                progress.remove_task(task)
            averages = stats.averages()
            record = {"epoch": epoch + 1, "step": global_step, "split": "train", **averages, "lr_factor": lr_factor,
                      "epoch_seconds": stats.seconds,
                      "images_per_s": here.size * stats.images / max(stats.seconds, 1e-9)}
            warnings = method.collapse_warnings(averages)
            if warnings:
                record["warnings"] = warnings
                for text in warnings:
                    logger.message(f"[yellow]warning:[/] {text}")
            logger.log(record)
            distributed.average_buffers(method.networks().values())  # BatchNorm statistics of every shard
            if writes and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs):
                logger.log({"epoch": epoch + 1, "step": global_step,
                            **evaluate_heldout(method, cfg, x_test, y_test, device)})
            if writes:
                run.save_model(method.defended_model())
            checkpoint(epoch, None)
            distributed.barrier()
            done_this_call += 1
            if distributed.any_rank(stop.requested, device) and epoch + 1 < epochs:
                raise Interrupted(f"interrupted after epoch {epoch + 1}; checkpoint saved. "
                                  f"Resume with: {run.resume_command}")
            if stop_after is not None and done_this_call >= stop_after and epoch + 1 < epochs:
                logger.message(f"stopped after epoch {epoch + 1}; continue with: {run.resume_command}")
                return run
    if writes:
        run.file("DONE").write_text("")
    logger.message(f"finished: {run.path}")
    return run
