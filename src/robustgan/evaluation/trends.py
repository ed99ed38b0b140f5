"""Logit trends along perturbation directions (paper 002, Sec. 4.4, Fig. 5).

For one test image x (true class y) and a direction d with |d|_inf = 1, the classifier's
logits at clip(x + s d, 0, 1) for s from -eps_max to +eps_max. Directions: Gaussian noise
(rescaled to L-inf norm 1), FGSM (sign of the input gradient), PGD (the PGD perturbation at
eps_max divided by eps_max) and, for gan_at runs, the trained generator's perturbation
(divided by its eps). The crossing point is the smallest s > 0 at which another class's
logit overtakes the true class's."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustgan.attacks import attack_mode, pgd
from robustgan.attacks.threat import eval_mode, loss_and_grad
from robustgan.errors import RobustganError
from robustgan.methods import method_class
from robustgan.plotting import pyplot
from robustgan.runs import CHECKPOINT, RunDir, load_state
from robustgan.runtime import default_eps, geometry_for, open_run


@dataclass
class Trend:
    name: str
    direction: torch.Tensor  # (C, H, W), |d|_inf = 1
    scales: np.ndarray  # (S,)
    logits: np.ndarray  # (S, k)
    crossing: float | None  # smallest s > 0 where the true class is overtaken


def unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.abs().max().clamp_min(1e-12)


def directions(model, x, y, eps_max: float, generator_delta: torch.Tensor | None, seed: int = 0) -> dict:
    """{'random', 'fgsm', 'pgd'[, 'generator']} -> (1, C, H, W) directions with L-inf norm 1."""
    gen = torch.Generator().manual_seed(seed)
    out = {"random": unit(torch.randn(x.shape, generator=gen)).to(x.device)}
    with attack_mode(model):
        _, grad = loss_and_grad(model, x.clone().requires_grad_(True), y)
    out["fgsm"] = grad.sign()
    torch.manual_seed(seed)
    out["pgd"] = unit(pgd(model, x, y, eps_max, steps=100, step_size=eps_max / 40, best=False) - x)
    if generator_delta is not None:
        out["generator"] = unit(generator_delta)
    return out


@torch.no_grad()
def logit_trends(model, x, y, dirs: dict, eps_max: float, points: int = 81) -> list[Trend]:
    """Logits along each direction (eval mode, every module's mode restored); the scale grid
    always contains 0 (the clean logits)."""
    with eval_mode(model):
        return _trends(model, x, y, dirs, eps_max, points)


def _trends(model, x, y, dirs: dict, eps_max: float, points: int) -> list[Trend]:
    scales = np.linspace(-eps_max, eps_max, points if points % 2 else points + 1)
    scales[len(scales) // 2] = 0.0
    trends = []
    for name, d in dirs.items():
        s = torch.tensor(scales, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        logits = model((x + s * d).clamp(0, 1)).float().cpu().numpy()  # (S, k)
        true = logits[:, int(y)]
        others = np.delete(logits, int(y), axis=1).max(1)
        overtaken = [sc for sc, t, o in zip(scales, true, others) if sc > 0 and o > t]
        trends.append(Trend(name, d[0].cpu(), scales, logits, float(min(overtaken)) if overtaken else None))
    return trends


def write_csv(trends: list[Trend], path: Path) -> None:
    k = trends[0].logits.shape[1]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["direction", "scale", *[f"logit_{j}" for j in range(k)]])
        for t in trends:
            for s, row in zip(t.scales, t.logits):
                writer.writerow([t.name, f"{s:.6g}", *[f"{v:.6g}" for v in row]])


def plot(trends: list[Trend], x: torch.Tensor, y: int, path: Path, title: str) -> None:
    plt = pyplot()

    rows = len(trends)
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.4 * rows), gridspec_kw={"width_ratios": [1, 3]})
    image = x[0].permute(1, 2, 0).numpy()
    for row, t in enumerate(trends):
        ax_img, ax = axes[row]
        shown = image if row == 0 else (t.direction.permute(1, 2, 0).numpy() + 1) / 2
        ax_img.imshow(shown.squeeze(), cmap="gray" if shown.shape[-1] == 1 or shown.ndim == 2 else None, vmin=0, vmax=1)
        ax_img.set_title("image" if row == 0 else f"{t.name} direction", fontsize=8)
        ax_img.axis("off")
        for j in range(t.logits.shape[1]):
            ax.plot(t.scales, t.logits[:, j], lw=2.2 if j == y else 0.9, label=f"class {j}" + (" (true)" if j == y else ""))
        ax.axvline(0, color="tab:orange", ls=":", lw=1)
        if t.crossing is not None:
            ax.axvline(t.crossing, color="tab:blue", ls="--", lw=1)
            ax.annotate(f"overtaken at {t.crossing:.3f}", (t.crossing, ax.get_ylim()[1]), fontsize=7, va="top")
        ax.set_title(f"{t.name}: logits along the direction", fontsize=9)
        ax.set_xlabel("perturbation size (L-inf)", fontsize=8)
    axes[0][1].legend(fontsize=6, ncol=2, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_trends(run_dir, index: int = 0, eps_max: float | None = None, out: Path | None = None,
               data_root=None, device="cpu") -> tuple[Path, Path, list[Trend]]:
    """The `robustgan trends` command: PNG + CSV for test image ``index`` of the run's data.
    ``eps_max`` defaults to the run's eps (``runtime.default_eps``), else 0.1."""
    run = RunDir(run_dir)
    cfg, model, x_all, y_all = open_run(run_dir, data_root=data_root, device=device)
    if not 0 <= index < len(y_all):
        raise RobustganError(f"--index must be in [0, {len(y_all) - 1}], got {index}")
    x, y = x_all[index:index + 1].float() / 255, y_all[index:index + 1]
    eps_max = eps_max or default_eps(cfg) or 0.1
    delta = generator_perturbation(run, cfg, geometry_for(cfg.data), x, y)  # on the CPU
    x, y, delta = x.to(device), y.to(device), None if delta is None else delta.to(device)
    trends = logit_trends(model, x, y, directions(model, x, y, eps_max, delta), eps_max)
    x = x.cpu()
    out = Path(out) if out else run.path / "trends"
    out.mkdir(parents=True, exist_ok=True)
    png, csv_path = out / f"trends_{index}.png", out / f"trends_{index}.csv"
    write_csv(trends, csv_path)
    plot(trends, x, int(y), png, f"{run.path.name}: test image {index} (class {int(y)}), eps_max={eps_max:.3g}")
    return png, csv_path, trends


def generator_perturbation(run, cfg, geometry, x, y) -> torch.Tensor | None:
    """The trained generator's perturbation for x (a method that ``perturbs``), else None."""
    kind = method_class(cfg.method.name)
    if not kind.perturbs or not run.has_checkpoint:
        return None
    method = kind(cfg, geometry, torch.device("cpu"))
    method.load_state_dict(load_state(run.file(CHECKPOINT))["method"])
    return method.perturbation(x, y)
