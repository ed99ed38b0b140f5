"""Gradient saliency maps (Simonyan et al. 2014) for paper 000 Figs. 5-7: for each run
(one eps_t) and each test-time eps_i, the adversarial image and |d logit_y / d x|."""

from __future__ import annotations

from pathlib import Path

import torch

from robustgan.attacks import attack_mode, default_step_size, pgd
from robustgan.eps import format_eps
from robustgan.errors import RobustganError
from robustgan.evaluation.curves import method_label
from robustgan.methods import eps_train
from robustgan.plotting import pyplot
from robustgan.runtime import open_run


def saliency(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|d logit_y / d x| taken as the max over channels: (N, C, H, W) -> (N, 1, H, W).
    Eval mode; the model's parameters get no gradient."""
    with attack_mode(model), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits = model(x).float()
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    return grad.abs().amax(1, keepdim=True)


def saliency_grid(runs, index: int, eps_list, out: Path, steps: int = 40, data_root=None, device="cpu",
                  norm: str = "linf") -> Path:
    """One PNG: a row pair per run (images, saliency), a column per eps_i (0 = clean), the
    adversarial images by PGD in ``norm``."""
    plt = pyplot()

    eps_cols = [0.0, *eps_list]
    fig, axes = plt.subplots(2 * len(runs), len(eps_cols), figsize=(1.6 * len(eps_cols), 3.3 * len(runs)),
                             squeeze=False)
    for r, run in enumerate(runs):
        cfg, model, x_all, y_all = open_run(run, data_root=data_root, device=device)
        if not 0 <= index < len(y_all):
            raise RobustganError(f"--index must be in [0, {len(y_all) - 1}], got {index}")
        x, y = x_all[index:index + 1].float().div(255).to(device), y_all[index:index + 1].to(device)
        for c, eps in enumerate(eps_cols):
            torch.manual_seed(0)
            x_adv = pgd(model, x, y, eps, steps, default_step_size(eps, steps), norm=norm) if eps > 0 else x
            with torch.no_grad():
                pred = int(model(x_adv).argmax(1))
            sal = saliency(model, x_adv, y)[0, 0].cpu()
            img_ax, sal_ax = axes[2 * r, c], axes[2 * r + 1, c]
            img = x_adv[0].permute(1, 2, 0).squeeze(-1).cpu().numpy()
            img_ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            sal_ax.imshow(sal.numpy(), cmap="hot")
            unit = "" if norm == "linf" or eps == 0 else f" ({norm.upper()})"
            img_ax.set_title(("clean" if eps == 0 else f"eps_i={format_eps(eps)}{unit}") + f"\npred {pred}", fontsize=7,
                             color="black" if pred == int(y) else "red")
            for ax in (img_ax, sal_ax):
                ax.set_xticks([])
                ax.set_yticks([])
        eps_t = eps_train(cfg)
        axes[2 * r, 0].set_ylabel(f"{method_label(cfg)}\neps_t={format_eps(eps_t)}", fontsize=7)
        axes[2 * r + 1, 0].set_ylabel("saliency", fontsize=7)
    fig.suptitle(f"test image {index}: PGD-{steps} adversarial images and gradient saliency", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
