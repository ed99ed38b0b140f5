"""The peers' curves for benchmarks/eval_engine.py: torchattacks' and adv_lib's APGD-CE + APGD-T
chains and Foolbox's PGD, each fn(model, x, y, eps) -> correct (n, len(eps)) bool."""

from __future__ import annotations

from pathlib import Path

import torch


def predicts(model, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).cpu()


def torchattacks_curve(model, x: torch.Tensor, y: torch.Tensor, eps: list[float]) -> torch.Tensor:
    """APGD-CE, then APGD-T on the points it left correct (AutoAttack's chaining), per eps."""
    import torchattacks

    columns = []
    for e in eps:
        ok = predicts(model, torchattacks.APGD(model, norm="Linf", eps=e, steps=100, loss="ce", n_restarts=1,
                                               seed=0)(x, y), y)
        idx = ok.nonzero()[:, 0]
        if len(idx):
            apgdt = torchattacks.APGDT(model, norm="Linf", eps=e, steps=100, n_restarts=1, n_classes=10, seed=0)
            ok[idx] = predicts(model, apgdt(x[idx], y[idx]), y[idx])
        columns.append(ok)
    return torch.stack(columns, 1)


def adv_lib_attacks():
    """adv_lib's ``apgd`` and ``apgd_targeted``. Its ``adv_lib.attacks`` package imports every
    attack, some of them torchvision, which does not import with the CPU torch build: the
    auto_pgd module is loaded alone, under a bare package of the same name."""
    import sys
    import types

    import adv_lib

    if "adv_lib.attacks" not in sys.modules:
        package = types.ModuleType("adv_lib.attacks")
        package.__path__ = [str(Path(adv_lib.__file__).parent / "attacks")]
        sys.modules["adv_lib.attacks"] = package
    from adv_lib.attacks.auto_pgd import apgd, apgd_targeted

    return apgd, apgd_targeted


def adv_lib_curve(model, x: torch.Tensor, y: torch.Tensor, eps: list[float]) -> torch.Tensor:
    """adv_lib's APGD-CE, then its APGD-T (9 targets) on the points APGD-CE left correct, per eps."""
    apgd, apgd_targeted = adv_lib_attacks()
    columns = []
    for e in eps:
        torch.manual_seed(0)  # adv_lib draws its random starts from the global generator
        ok = predicts(model, apgd(model, x, y, e, float("inf"), n_iter=100, loss_function="ce"), y)
        idx = ok.nonzero()[:, 0]
        if len(idx):
            ok[idx] = predicts(model, apgd_targeted(model, x[idx], y[idx], e, float("inf"), n_iter=100,
                                                    loss_function="dlr", num_targets=9), y[idx])
        columns.append(ok)
    return torch.stack(columns, 1)


def foolbox_curve(model, x: torch.Tensor, y: torch.Tensor, eps: list[float]) -> torch.Tensor:
    """Foolbox's LinfPGD, PGD-40 with our step size (2.5 eps / 40); it returns the last iterate."""
    import foolbox

    attack = foolbox.attacks.LinfPGD(rel_stepsize=2.5 / 40, steps=40, random_start=True)
    _, _, success = attack(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    return (~success).T.cpu()  # success: (len(eps), n)
