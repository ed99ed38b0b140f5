"""Where a model runs and what it runs on: the device, autocast, the fast paths, the CPU
allocator, the data geometry, a dataset split, and a run's defended model. ``open_run`` is
how every evaluation command starts: config, model on the device, test images."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from robustgan import data
from robustgan.config import Config, DataConfig
from robustgan.errors import RunError
from robustgan.methods import Geometry, eps_train, external, method_class
from robustgan.runs import CONFIG, MODEL, RunDir


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {name} (train.device or --device) needs CUDA, which is not available; "
                       f"use cpu or auto")
    return device


def autocast_for(amp: str, device: torch.device):
    """bf16 autocast on CUDA when asked or 'auto'; off on CPU unless 'bf16' is forced."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use else nullcontext


def apply_fast_paths(method, cfg: Config) -> None:
    """``train.channels_last`` and ``train.compile`` on every network of the method (in place:
    state_dict keys unchanged). The benchmarks call this too, so they time the training path."""
    for network in method.networks().values():
        if cfg.train.channels_last:
            network.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            network.compile()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the largest value `man mallopt` documents on 64-bit
TRIM_THRESHOLD = 1 << 30


MKLDNN_SWITCH = "ROBUSTGAN_MKLDNN"


def apply_mkldnn_switch() -> None:
    """``ROBUSTGAN_MKLDNN=0`` turns oneDNN's CPU kernels off (``torch.backends.mkldnn``) in this
    process: torch's own kernels, another float path. The CLI and the test suite honour it, so
    a test and the commands it starts take the same path (CI runs the statistical tests so)."""
    if os.environ.get(MKLDNN_SWITCH) == "0":
        torch.backends.mkldnn.enabled = False


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """On glibc, keep the memory PyTorch frees on the CPU in the process for the next step.

    A training or attack step allocates and frees the same megabyte-sized activations every
    time. By default glibc serves each from fresh mmap'd pages (or trims the heap) and hands
    them back on free, so every step pays page faults on zeroed pages: a fifth to a third of a
    CPU PGD-AT step here (BENCHMARKS.md, "CPU allocator"). With both thresholds raised, blocks
    up to 32 MiB come from the heap and stay there; the process keeps its peak memory instead
    of returning it. Process-wide; a no-op (False) off glibc. The CLI and ``fit`` call it."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a libc without mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def geometry_for(dcfg: DataConfig) -> Geometry:
    """Channels, image size and classes: the dataset's, or for imagefolder / npz the ones
    training resolved into the config (``resolve_layout``), so no files are needed."""
    meta = data.info(dcfg.name)
    if not meta.user:
        return Geometry(meta.channels, meta.image_size, meta.num_classes)
    if not (dcfg.channels and dcfg.image_size and dcfg.classes):
        raise RunError(f"{dcfg.name}: data.channels, data.image_size and data.classes are not resolved; "
                       "train the run first (training reads them from the files)")
    return Geometry(dcfg.channels, dcfg.image_size, len(dcfg.classes))


def resolve_layout(dcfg: DataConfig, root=None) -> DataConfig:
    """For imagefolder / npz: data.channels, data.image_size and data.classes read from the
    files where the config leaves them open (the run records them; geometry_for uses them)."""
    if not data.info(dcfg.name).user:
        return dcfg
    layout = data.describe(dcfg.name, root if root is not None else dcfg.root, dcfg.channels, dcfg.image_size)
    return replace(dcfg, channels=layout.channels, image_size=layout.image_size,
                   classes=tuple(dcfg.classes or layout.classes))


def load_split(dcfg: DataConfig, split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 (N, C, H, W), y int64 (N,)) of a split; ``root`` overrides ``data.root``;
    the train split honours ``data.train_limit``."""
    layout = (dict(channels=dcfg.channels, image_size=dcfg.image_size, classes=dcfg.classes)
              if data.info(dcfg.name).user else {})
    x, y = data.load(dcfg.name, root if root is not None else dcfg.root, split, **layout)
    if split == "train" and dcfg.train_limit:
        x, y = x[:dcfg.train_limit], y[:dcfg.train_limit]
    return x, y


def default_eps(cfg: Config) -> float:
    """The eps a run is evaluated at when none is given: its held-out evaluation eps, else
    its training eps (0 when it has neither, e.g. a standard run without eval_eps)."""
    return cfg.train.eval_eps or eps_train(cfg)


def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The run's defended model, rebuilt from config.toml + model.safetensors, eval mode.
    This is ``robustgan.load``."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunError(f"run directory {run.path} does not exist")
    cfg = run.config()
    weights = weights_path(run_dir)
    if not weights.is_file():
        pickles = [p.name for p in run.path.glob("*.pt*")] + [p.name for p in run.path.glob("*.pth")]
        hint = f" (found {', '.join(pickles)}: pickled checkpoints are never loaded)" if pickles else ""
        raise RunError(f"{run.path} has no {MODEL}{hint}")
    model = method_class(cfg.method.name).build_defended(cfg, geometry_for(cfg.data))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise RunError(f"{weights} is not a valid safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise RunError(f"{weights} does not match {CONFIG} ({first})") from None
    return model.eval()


def weights_path(run_dir: str | Path) -> Path:
    """The defended model's weights: the run's model.safetensors, or an external model's file."""
    run = RunDir(run_dir)
    cfg = run.config()
    return method_class(cfg.method.name).weights_file(cfg, run) or run.file(MODEL)


def model_identity(run_dir: str | Path) -> str:
    """What the evaluation cache is keyed by: the weights' SHA-256, and for an external model
    its factory and the SHA-256 of the factory's source file (two factories over the same
    weights, or an edited factory, never share a result)."""
    cfg = RunDir(run_dir).config()
    return file_sha256(weights_path(run_dir))[:16] + method_class(cfg.method.name).identity(cfg)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_run(factory: str, weights: str | Path, dataset: str, *, data_root=None, out=None) -> Path:
    """A run directory for a model trained elsewhere (``methods.external``): its config and,
    as it is evaluated, its evaluation cache, checks and model card. Default place: next to
    the weights, ``<weights stem>.<factory, as a file name>.robustgan/``; ``out`` overrides.
    A later call with another --data-root updates the recorded root."""
    weights = Path(weights).expanduser().resolve()
    external.check_weights_file(weights)
    factory = external.absolute_factory(factory)
    external.import_factory(factory)  # a factory that does not import fails here, before anything is written
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in factory.rsplit("/", 1)[-1])
    path = Path(out) if out is not None else weights.with_name(f"{weights.stem}.{tag}.robustgan")
    root = str(Path(data_root).expanduser().resolve()) if data_root is not None else None
    cfg = Config(data=DataConfig(name=dataset, root=root),
                 method=external.ExternalConfig(factory=factory, weights=str(weights))).validate()
    run = RunDir(path)
    if run.file(CONFIG).is_file():
        saved = run.config()
        if (saved.method, saved.data.name) != (cfg.method, cfg.data.name):
            raise RunError(f"{path} holds another model's results ({run.file(CONFIG)} differs); pass --results DIR")
        if data_root is None:
            return path
        cfg.data = replace(saved.data, root=cfg.data.root)
    cfg.data = resolve_layout(cfg.data)
    run.create(cfg)
    return path


def open_run(run_dir: str | Path, *, limit: int = 0, data_root=None, device="cpu"):
    """(cfg, model, x, y) for evaluating a run: its config, its defended model on ``device``
    in eval mode, and the first ``limit`` test images (all when 0) as uint8, with labels."""
    cfg = RunDir(run_dir).config()
    model = load_model(run_dir).to(device)
    x, y = load_split(cfg.data, "test", data_root)
    if limit:
        x, y = x[:limit], y[:limit]
    return cfg, model, x, y


def training_cost(run_dir: str | Path) -> dict | None:
    """What training ``run_dir`` cost, summed over its epochs (metrics.jsonl, counted by the
    loop's PassCounter) and its sub-runs (ATGAN's loss network):

    - ``forward_passes`` / ``backward_passes``: image-passes through the method's networks
      (an image through G and D is two), counting the inner attacks' passes;
    - ``forward_per_example`` / ``backward_per_example``: the same per training example drawn
      (this run's own steps: PGD-k AT is k + 1 and k + 1; FGSM-RS 2 and 2);
    - ``guard_passes``: the overfitting guard's passes (single-step methods: PGD-10 and
      FGSM-RS on ``train.guard_images`` training images after every epoch);
    - ``passes_per_image``: (forward + backward + guard) / training-set size over the whole
      run, sub-runs included: the frontier's cost axis;
    - ``seconds``: time inside the training steps (no evaluation, no checkpoints).

    None for a model trained elsewhere or a run trained before passes were counted."""
    run = RunDir(run_dir)
    if not run.is_started:
        return None
    cfg = run.config()
    records = [r for r in run.metrics() if r.get("split") == "train"]
    if not method_class(cfg.method.name).trained_here or not records or any("forward_passes" not in r for r in records):
        return None
    forward, backward = sum(r["forward_passes"] for r in records), sum(r["backward_passes"] for r in records)
    drawn = sum(r["images"] for r in records)
    guard = sum(r.get("passes", 0) for r in run.metrics() if r.get("split") == "guard")
    cost = {"forward_passes": forward, "backward_passes": backward, "guard_passes": guard,
            "train_images": max(r["images"] for r in records),
            "epochs": len(records), "forward_per_example": forward / drawn, "backward_per_example": backward / drawn,
            "seconds": sum(r["epoch_seconds"] for r in records), "subruns": {}}
    for name, spec in method_class(cfg.method.name).subruns(cfg).items():
        sub = training_cost(run.path / name if isinstance(spec, Config) else spec)
        if sub is None:
            return None
        cost["subruns"][name] = sub
        for key in ("forward_passes", "backward_passes", "guard_passes", "seconds"):
            cost[key] += sub[key]
    total = cost["forward_passes"] + cost["backward_passes"] + cost["guard_passes"]
    cost["passes_per_image"] = total / cost["train_images"]
    return cost


def guard_collapse(run_dir: str | Path) -> dict | None:
    """The overfitting guard's collapse record of a run (see monitor.OverfitGuard), or None."""
    return next((r for r in RunDir(run_dir).metrics() if r.get("split") == "guard" and r.get("collapsed")), None)
