"""The one training loop (the engine). It knows nothing about any method: it trains the
sub-runs a method declares, builds the method named by the config, feeds it on-device
batches, sets learning rates, counts the passes through its networks (the training cost),
guards single-step methods against catastrophic overfitting, evaluates, logs, checkpoints
and resumes.

``fit`` reads top to bottom as the whole story; each part (restore, one epoch, the end of
an epoch, a checkpoint) is a function of a ``Training`` record passed explicitly."""

from __future__ import annotations

import itertools
import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustgan import data, distributed
from robustgan.attacks import AttackSettings, Batching, robust_accuracy
from robustgan.config import Config, load_config
from robustgan.errors import ConfigError, Diverged, Interrupted, RunError
from robustgan.methods import Method, method_class, norm_train
from robustgan.monitor import OverfitGuard, PassCounter, build_guard
from robustgan.runs import CHECKPOINT, RunDir, checkpoint_step, load_state, save_state
from robustgan.runtime import (apply_fast_paths, autocast_for, geometry_for, keep_freed_memory, load_model, load_split,
                               resolve_device, resolve_layout)

console = Console(stderr=True)


@dataclass
class Training:
    """What one ``fit`` call trains with, handed explicitly to each part of the loop."""

    cfg: Config
    run: RunDir
    method: Method
    batcher: data.Batcher
    device: torch.device
    world: distributed.World
    logger: Logger
    epochs: int
    total_steps: int
    counter: PassCounter
    guard: OverfitGuard | None
    step: int = 0  # optimisation steps taken so far, across resumes

    @property
    def writes(self) -> bool:
        return self.world.is_main  # only rank 0 touches the run directory


# ------------------------------------------------------------------ the story
def fit(cfg: Config | str | Path | None, out: str | Path, *, resume: bool = False, quiet: bool = False,
        stop_after: int | None = None, data_root: str | None = None, overrides: Sequence[str] = ()) -> RunDir:
    """Train ``cfg`` (a Config, or a TOML file read with ``overrides`` such as
    "train.epochs=3") into run directory ``out``; with ``resume`` continue from its
    checkpoint (using the run's saved config). Exported as ``robustgan.fit``. ``stop_after``
    ends this invocation after that many epochs (the run stays resumable). Returns the run
    directory. A directory this call made is removed again if its data cannot be loaded
    (nothing of the run is written before that). On glibc it also keeps freed CPU memory
    in the process from then on (``runtime.keep_freed_memory``)."""
    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg, list(overrides))
    elif overrides:
        raise ConfigError("overrides apply to a config file; set the fields of a Config directly")
    keep_freed_memory()
    run = RunDir(out)
    cfg, resume = resolve_start(run, cfg, resume, data_root)
    here = distributed.setup(resolve_device(cfg.train.device))
    made = not run.path.exists()
    if here.is_main:  # rank 0 owns the directory and its lock
        run.path.mkdir(parents=True, exist_ok=True)
        run.acquire_lock()
    try:
        try:
            train_split, test_split = load_split(cfg.data, "train"), load_split(cfg.data, "test")  # bad data: no run
            cfg.data = resolve_layout(cfg.data)  # imagefolder / npz: the run records channels, size and classes
        except BaseException:
            if made and here.is_main:
                run.release_lock()
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        if not resume and here.is_main:
            run.create(cfg)
        subrun_models = {} if resume else train_subruns(cfg, run, quiet)  # a resumed method holds them
        training = build_training(cfg, run, here, quiet, train_split)
        if resume:
            start_epoch, partial = restore_checkpoint(training)
        else:
            training.method.use_subruns(subrun_models)
            start_epoch, partial = 0, None
        stopped_after = train_epochs(training, start_epoch, partial, stop_after, test_split, quiet)
        if stopped_after is None:
            if training.writes:
                run.file("DONE").write_text("")
            training.logger.message(f"finished: {run.path}")
        else:
            training.logger.message(f"stopped after epoch {stopped_after}; continue with: {run.resume_command}")
        training.logger.close()
        return run
    finally:
        if here.is_main:
            run.release_lock()
        distributed.barrier()  # a sub-run is read by every rank once it is finished


def resolve_start(run: RunDir, cfg: Config | None, resume: bool, data_root) -> tuple[Config, bool]:
    """The config to train and whether a checkpoint is restored; refuses to overwrite a run."""
    if resume:
        if not run.is_started:
            raise RunError(f"nothing to resume: {run.path} has no config.toml")
        cfg = run.config()
        resume = run.has_checkpoint  # stopped before its first checkpoint: start over with its config
        if not resume and distributed.world().is_main:
            run.file("metrics.jsonl").unlink(missing_ok=True)
    elif run.has_checkpoint:
        raise RunError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
    assert cfg is not None
    if data_root is not None:  # recorded in config.toml, so sub-runs, resume and eval find the files
        cfg.data.root = str(data_root)
    return cfg, resume


def ensure_trained(cfg: Config, out: str | Path, *, quiet: bool = True, data_root=None) -> Path:
    """Finish the run in ``out``: nothing if complete, resume if started, else train ``cfg``
    (sub-runs, a sweep's runs, the check's surrogate). ``data_root`` as for ``fit``."""
    run = RunDir(out)
    if not run.is_complete:
        fit(None if run.is_started else cfg, out, resume=run.is_started, quiet=quiet, data_root=data_root)
    return run.path


def train_subruns(cfg: Config, run: RunDir, quiet: bool) -> dict[str, torch.nn.Module]:
    """Train (or finish) each sub-run the method declares, inside the run directory, and
    return their defended models. Resuming the outer run resumes an interrupted sub-run."""
    trained = {}
    for name, spec in method_class(cfg.method.name).subruns(cfg).items():
        path = spec
        if isinstance(spec, Config):
            path = run.path / name
            if not RunDir(path).is_complete and distributed.world().is_main and not quiet:
                console.print(f"training sub-run {name} ({spec.model.name}, {spec.method.name}, "
                              f"{spec.train.epochs} epochs) -> {path}")
            try:  # the outer run's data root: a resumed sub-run finds moved files too
                ensure_trained(spec, path, quiet=quiet, data_root=cfg.data.root)
            except Interrupted:
                raise Interrupted(f"interrupted while training {path}; checkpoint saved. "
                                  f"Resume with: {run.resume_command}") from None
        trained[name] = load_model(path)
    return trained


def build_training(cfg: Config, run: RunDir, here: distributed.World, quiet: bool, train_split) -> Training:
    """Seed, the method (same initial weights on every rank), the batcher with the training
    set on the device."""
    torch.manual_seed(cfg.train.seed)
    device = distributed.device_for(resolve_device(cfg.train.device), here)
    x_train, y_train = train_split
    method = method_class(cfg.method.name)(cfg, geometry_for(cfg.data), device)
    distributed.broadcast_state(method.networks().values())
    apply_fast_paths(method, cfg)
    if here.enabled:  # each rank's own stream for random starts, noise...
        torch.manual_seed(cfg.train.seed + 7919 * here.rank)
    batcher = data.Batcher(x_train, y_train, cfg.train.batch_size, device=device, flip=cfg.data.flip,
                           shift=cfg.data.shift, seed=cfg.train.seed, rank=here.rank, world_size=here.size,
                           channels_last=cfg.train.channels_last)
    epochs = cfg.train.epochs if not cfg.train.steps else math.ceil(cfg.train.steps / len(batcher))
    logger = Logger(run, quiet, cfg.train.tensorboard, here.is_main)
    for note in method.notes():
        logger.message(note)
    return Training(cfg, run, method, batcher, device, here, logger, epochs,
                    total_steps=cfg.train.steps or epochs * len(batcher), counter=PassCounter(method.networks()),
                    guard=build_guard(cfg, method, x_train, y_train, device))


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(training: Training, epoch: int, partial: EpochStats | None = None) -> None:
    """Epoch ``epoch`` finished (``partial`` None), or ``partial.steps`` steps into it. Rank 0 only."""
    if not training.writes:
        return
    rng = {"torch": torch.get_rng_state()}
    if training.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(training.device)
    state = {"epoch": epoch if partial is None else epoch - 1, "step": training.step,
             "method": training.method.state_dict(), "batcher": training.batcher.state_dict(), "rng": rng}
    if partial is not None:
        state["partial_epoch"] = partial.state_dict()
    save_state(training.run.file(CHECKPOINT), state)


def restore_checkpoint(training: Training) -> tuple[int, dict | None]:
    """Networks, optimizers, batcher position and RNG from the checkpoint; returns the epoch
    to continue with and that epoch's saved statistics (None at an epoch boundary)."""
    state = load_state(training.run.file(CHECKPOINT))
    training.method.load_state_dict(state["method"])
    training.batcher.load_state_dict(state["batcher"])
    torch.set_rng_state(state["rng"]["torch"])
    if training.device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], training.device)
    training.step = state["step"]
    if training.world.enabled:  # rank 0's saved streams are re-split per rank
        torch.manual_seed(training.cfg.train.seed + 7919 * training.world.rank + training.step)
    if training.writes:
        training.run.truncate_metrics(state["epoch"] + 1)  # records count epochs from 1
    if training.guard is not None:  # the guard compares with the last epoch it measured
        measured = [r["pgd_acc"] for r in training.run.metrics() if r.get("split") == "guard"]
        training.guard.previous = measured[-1] if measured else None
    start_epoch = state["epoch"] + 1
    training.logger.message(f"resuming {training.run.path} at epoch {start_epoch + 1}/{training.epochs}, "
                            f"step {training.step}")
    return start_epoch, state.get("partial_epoch")


# ------------------------------------------------------------------ epochs
def train_epochs(training: Training, start_epoch: int, partial: dict | None, stop_after: int | None, test_split,
                 quiet: bool) -> int | None:
    """Epochs from ``start_epoch`` to the end. Returns None when the run is finished, or the
    last epoch done (counted from 1) when ``stop_after`` epochs came first. Ctrl-C raises
    Interrupted after a checkpoint."""
    progress = None if quiet or not training.writes else Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=True)
    with progress or nullcontext(), StopFlag(training.logger.message) as stop:
        for done, epoch in enumerate(range(start_epoch, training.epochs), 1):
            lr_factor = set_learning_rates(training.method, training.cfg, epoch, training.epochs)
            if training.cfg.schedule.per_step:  # logged: the factor of the epoch's last step
                lr_factor = training.cfg.schedule.factor(epoch + 1, training.epochs)
            training.method.on_epoch_start(epoch, training.epochs)
            stats = EpochStats(training.device, **(partial or {}))
            partial = None
            run_epoch(training, epoch, stats, stop, progress)
            if end_epoch(training, epoch, stats, lr_factor, test_split) == "collapsed":
                return None  # finished: the run keeps the last good epoch's weights
            last = epoch + 1 == training.epochs
            if distributed.any_rank(stop.requested, training.device) and not last:
                raise Interrupted(f"interrupted after epoch {epoch + 1}; checkpoint saved. "
                                  f"Resume with: {training.run.resume_command}")
            if stop_after is not None and done >= stop_after and not last:
                return epoch + 1
    return None


def run_epoch(training: Training, epoch: int, stats: EpochStats, stop: StopFlag, progress) -> None:
    """The steps of one epoch (from ``stats.steps`` when resuming mid-epoch), with
    mid-epoch checkpoints every ``train.checkpoint_every`` steps and on Ctrl-C."""
    autocast, every = autocast_for(training.cfg.train.amp, training.device), training.cfg.train.checkpoint_every
    remaining = min(len(training.batcher) - stats.steps, training.total_steps - training.step)
    task = progress.add_task(f"epoch {epoch + 1}/{training.epochs}", total=len(training.batcher),
                             completed=stats.steps, info="") if progress else None
    started = time.perf_counter()
    schedule, steps_per_epoch = training.cfg.schedule, len(training.batcher)
    for x, y in itertools.islice(training.batcher, remaining):
        if schedule.per_step:  # the lr of this step (Wong et al.: the step's end, so the first is not 0)
            position = epoch + (training.batcher.position or steps_per_epoch) / steps_per_epoch
            set_learning_rates(training.method, training.cfg, position, training.epochs)
        with autocast(), training.counter:
            metrics = training.method.step(x, y)
        training.step += 1
        stats.add(metrics, training.step, len(y))
        stats.add_passes(*training.counter.take())
        at_log = training.step % training.cfg.train.log_every == 0
        if progress is not None:
            progress.advance(task)
            if at_log:
                shown = " ".join(f"{k}={v:.3f}" for k, v in stats.averages(across_ranks=False).items())
                rate = training.world.size * stats.images / (stats.seconds + time.perf_counter() - started)
                progress.update(task, info=f"{shown} {rate:.0f} img/s")
        if at_log:
            stats.check_finite(epoch, training.run)
        # data-parallel ranks agree on stopping (a collective) at log steps only
        stop_now = (at_log or not training.world.enabled) and distributed.any_rank(stop.requested, training.device)
        if training.batcher.position != 0 and (stop_now or (every and training.step % every == 0)):
            stats.check_finite(epoch, training.run)
            stats.seconds += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(training, epoch, stats)
            if stop_now:
                raise Interrupted(f"interrupted at step {training.step} (epoch {epoch + 1}); checkpoint saved. "
                                  f"Resume with: {training.run.resume_command}")
    stats.seconds += time.perf_counter() - started
    stats.check_finite(epoch, training.run)
    if progress is not None:
        progress.remove_task(task)


def end_epoch(training: Training, epoch: int, stats: EpochStats, lr_factor: float, test_split) -> str:
    """Log the epoch's averages, its training cost (and collapse warnings), evaluate on
    held-out data when due, save the model and a checkpoint. Returns "collapsed" when the
    overfitting guard trips: then neither is saved and the run keeps the previous epoch."""
    averages = stats.averages()
    passes = distributed.sum_across_ranks(torch.tensor([stats.forward, stats.backward, stats.images],
                                                       dtype=torch.float64, device=training.device)).tolist()
    record = {"epoch": epoch + 1, "step": training.step, "split": "train", **averages, "lr_factor": lr_factor,
              "epoch_seconds": stats.seconds,
              "images_per_s": training.world.size * stats.images / max(stats.seconds, 1e-9),
              "images": int(passes[2]), "forward_passes": int(passes[0]), "backward_passes": int(passes[1])}
    warnings = training.method.collapse_warnings(averages)
    if warnings:
        record["warnings"] = warnings
        for text in warnings:
            training.logger.message(f"[yellow]warning:[/] {text}")
    training.logger.log(record)
    distributed.average_buffers(training.method.networks().values())  # BatchNorm statistics of every shard
    if training.guard is not None and check_guard(training, epoch) == "collapsed":
        return "collapsed"
    if training.writes and ((epoch + 1) % training.cfg.train.eval_every == 0 or epoch + 1 == training.epochs):
        heldout = evaluate_heldout(training.method, training.cfg, *test_split, training.device)
        training.logger.log({"epoch": epoch + 1, "step": training.step, **heldout})
    if training.writes:
        training.run.save_model(training.method.defended_model())
    save_checkpoint(training, epoch)
    distributed.barrier()
    return "saved"


def check_guard(training: Training, epoch: int) -> str:
    """Measure the guard after ``epoch`` and log it; on a collapse warn and say which epoch the
    run keeps. Every rank measures the same weights on the same images, so all agree."""
    guard = training.guard
    with training.counter:  # the guard's passes are part of what the method costs
        accuracy, single = guard.measure(training.method.defended_model())
    passes = sum(training.counter.take())
    previous = guard.previous
    record = {"epoch": epoch + 1, "step": training.step, "split": "guard", "n": len(guard.y), "eps": guard.eps,
              "pgd_acc": accuracy, "fgsm_rs_acc": single, "passes": passes}
    why = None
    if previous is not None and accuracy < previous - guard.drop:
        why = f"PGD-{guard.STEPS} accuracy fell from {previous:.1%} to {accuracy:.1%}"
    elif single - accuracy > guard.gap:
        why = f"FGSM-RS accuracy is {single:.1%} but PGD-{guard.STEPS}'s {accuracy:.1%}"
    # one decision for all ranks (a GPU's kernels may flip a borderline image on one of them)
    if not distributed.any_rank(why is not None, training.device):
        guard.previous = accuracy
        training.logger.log(record)
        return "ok"
    why = why or "another rank measured a collapse"
    text = f"catastrophic overfitting at epoch {epoch + 1}: on {len(guard.y)} training images, {why}"
    if epoch == 0:  # no good epoch to keep: no weights are handed over
        training.logger.log(record | {"collapsed": True, "warnings": [text]})
        raise Diverged(f"{text}; no epoch was good, so {training.run.path} has no model. Lower the inner attack's "
                       "step or the learning rate (for FGSM-RS: or use n_fgsm) and train a new run")
    text += f"; training stopped and the run keeps epoch {epoch}'s weights"
    record |= {"collapsed": True, "kept_epoch": epoch, "warnings": [text]}
    training.logger.message(f"[yellow]warning:[/] {text}")
    training.logger.log(record)
    return "collapsed"


def evaluate_heldout(method: Method, cfg: Config, x_test, y_test, device) -> dict:
    """Clean and PGD accuracy on the first ``train.eval_limit`` test images (metrics.jsonl)."""
    model = method.defended_model()
    was_training = model.training
    limit = cfg.train.eval_limit or len(y_test)
    x, y = x_test[:limit], y_test[:limit]
    batching = Batching(device, cfg.train.batch_size * 2)
    kw = dict(num_classes=method.geometry.num_classes)
    result = {"split": "test", "n": len(y), "clean_acc": robust_accuracy(model, x, y, 0.0, AttackSettings("none"),
                                                                          batching, **kw)}
    if cfg.train.eval_eps > 0:  # random starts from torch's generator, seeded by the run
        pgd = AttackSettings("pgd", steps=cfg.train.eval_steps, seed=None, norm=norm_train(cfg))
        result[f"pgd{cfg.train.eval_steps}_acc"] = robust_accuracy(model, x, y, cfg.train.eval_eps, pgd, batching, **kw)
        result["eval_eps"] = cfg.train.eval_eps
        if norm_train(cfg) != "linf":
            result["eval_norm"] = norm_train(cfg)
    model.train(was_training)
    return result


def set_learning_rates(method: Method, cfg: Config, epoch: float, epochs: int) -> float:
    factor = cfg.schedule.factor(epoch, epochs)
    for opt in method.scheduled_optimizers():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
    return factor


# ------------------------------------------------------------------ logging, statistics, Ctrl-C
class Logger:
    """metrics.jsonl always; the console unless quiet; TensorBoard when asked."""

    def __init__(self, run: RunDir, quiet: bool, tensorboard: bool, writes: bool = True):
        self.run, self.quiet, self.writer, self.writes = run, quiet or not writes, None, writes
        if tensorboard and writes:
            try:  # optional dependency
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
            self.writer.flush()  # an epoch's record: a rank that exits without finalization loses none
        if not self.quiet:
            shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            console.print(shown)

    def message(self, text: str) -> None:
        if not self.quiet:
            console.print(text)

    def close(self) -> None:
        """Close TensorBoard's event file (``log`` has written every record out)."""
        if self.writer is not None:
            self.writer.close()


class EpochStats:
    """The running sums of one epoch's step metrics, kept on the device as one vector (a
    handful of kernels per step, no host sync), with the first step at which each metric
    was non-finite (-1 while finite)."""

    def __init__(self, device: torch.device, sums=None, steps=0, images=0, seconds=0.0, forward=0, backward=0):
        self.device = device
        self.keys: list[str] = []
        self.total = torch.zeros(0, device=device)
        self.first_bad = torch.zeros(0, dtype=torch.long, device=device)
        self.steps, self.images, self.seconds = steps, images, seconds
        self.forward, self.backward = forward, backward  # image-passes through the networks (PassCounter)
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

    def add_passes(self, forward: int, backward: int) -> None:
        self.forward, self.backward = self.forward + forward, self.backward + backward

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
        return {"sums": self.sums, "steps": self.steps, "images": self.images, "seconds": self.seconds,
                "forward": self.forward, "backward": self.backward}


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
