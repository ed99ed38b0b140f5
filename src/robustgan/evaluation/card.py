"""Model cards (`robustgan card`): model_card.json and model_card.md for a run or any model.

The JSON follows RobustBench's model-info fields where one exists (``name``, ``dataset``,
``threat_model``, ``eps``, ``architecture``, ``clean_acc``, ``additional_data``,
``number_forward_passes``; accuracies in percent, as RobustBench writes them). Its robust
accuracy is robustgan's worst-case ensemble, not AutoAttack, so it is ``robust_acc`` with the
exact protocol beside it, never RobustBench's ``autoattack_acc``. The schema is
``model_card.schema.json`` beside this file; the numbers are those ``robustgan eval --json``
prints for the same settings (same cache)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from robustgan.attacks import AttackSettings, get_norm
from robustgan.attacks.outputs import decisions_only_warning
from robustgan.config import to_dict
from robustgan.eps import format_eps
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.checks import check_file
from robustgan.evaluation.curves import compute_curve
from robustgan.evaluation.engine import Subject
from robustgan.evaluation.verdicts import status_of, summary_line
from robustgan.methods import method_class
from robustgan.runs import RunDir, atomic_write
from robustgan.runtime import file_sha256, guard_collapse, load_split, training_cost, weights_path
from robustgan.version import __version__

SCHEMA = Path(__file__).with_name("model_card.schema.json")


def _architecture(cfg) -> str:
    return method_class(cfg.method.name).architecture(cfg)


def _checks(run: RunDir, norm: str) -> dict:
    path = run.file(check_file(norm))
    if not path.is_file():
        flag = "" if norm == "linf" else f" --norm {norm}"
        return {"status": "not run", "summary": f"not run: robustgan check {run.path}{flag}", "checks": []}
    report = json.loads(path.read_text())
    checks = [{"name": c["name"], "status": status_of(c), "detail": c["detail"]} for c in report["checks"]]
    return {"status": report.get("status", "warn" if any(c["status"] == "warn" for c in checks) else "pass"),
            "summary": summary_line(report["checks"]), "eps": report["eps"], "n": report["n"], "checks": checks}


def build_card(run_dir, eps: list[float], settings: AttackSettings = AttackSettings(),
               ctx: EvalContext = EvalContext()) -> dict:
    """The card of one run (or external model's run directory), measuring what is not cached."""
    run, subject = RunDir(run_dir), Subject.open(run_dir, ctx)
    cfg, data_root = subject.config, ctx.data_root
    curve = compute_curve(subject, eps, settings, ctx)
    s = curve.settings
    kind = method_class(cfg.method.name)
    external = not kind.trained_here  # trained elsewhere: its training set and config are unknown here
    source = kind.provenance(cfg)
    n_train = None if external else len(load_split(cfg.data, "train", data_root)[1])
    n_test_all = len(load_split(cfg.data, "test", data_root)[1])
    return {
        "name": f"{source['model']} ({Path(source['weights']).name})" if external else run.path.name,
        "dataset": cfg.data.name,
        "threat_model": {"linf": "Linf", "l2": "L2"}[s["norm"]],  # RobustBench's names
        "eps": [format_eps(e) for e in curve.eps],
        "architecture": _architecture(cfg),
        "method": cfg.method.name,
        "clean_acc": round(100 * curve.clean, 2),
        "robust_acc": [{"eps": format_eps(e), "worst_case": round(100 * a, 2),
                        "protocol": round(100 * p, 2) if p is not None else None}
                       for e, a, p in zip(curve.eps, curve.acc, curve.protocol or [None] * len(curve.eps))],
        "additional_data": None if external else False,
        "number_forward_passes": 1,
        "evaluation": {"attack": s["attack"], "attacks": s["attacks"], "steps": s["steps"], "targets": s["targets"],
                       "restarts": s["restarts"], "seed": s["seed"], "protocol": s["protocol"], "n": curve.n,
                       "norm": s["norm"],
                       "decisions_only": s["decisions_only"]},
        "splits": {"train": n_train, "test": n_test_all, "evaluated": curve.n},
        "classes": list(cfg.data.classes),
        "checks": _checks(run, s["norm"]),
        "training": None if external else to_dict(cfg),
        "training_cost": training_cost(run_dir),
        "collapse": guard_collapse(run_dir),
        "software": {"robustgan": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "platform": sys.platform},
        "weights_sha256": file_sha256(weights_path(run_dir)),
    }


def card_markdown(card: dict) -> str:
    ev = card["evaluation"]
    norm = get_norm(ev.get("norm", "linf"))
    scale = "[0, 1] pixel scale" if norm.name == "linf" else "pixel scale, the Euclidean distance over all pixels"
    unit = "" if norm.name == "linf" else f" ({norm.title})"
    lines = [f"# Model card: {card['name']}", "",
             f"- **Dataset**: {card['dataset']} ({card['splits']['train'] or 'unknown'} train, "
             f"{card['splits']['test']} test images; {card['splits']['evaluated']} evaluated)",
             f"- **Threat model**: {norm.title}, eps in {scale}: {', '.join(card['eps'])}",
             f"- **Architecture / method**: {card['architecture']} / {card['method']}",
             f"- **Clean accuracy**: {card['clean_acc']:.2f}%",
             f"- **Weights SHA-256**: `{card['weights_sha256']}`", "",
             "## Robust accuracy", "",
             f"Worst case per test point over {' + '.join(ev['attacks'])} ({ev['steps']} steps, {ev['restarts']} "
             f"restart(s), seed {ev['seed']}, n = {ev['n']}); the papers' protocol ({ev['protocol'] or 'not run'}) "
             "beside it.", "",
             *([f"**{decisions_only_warning(ev['decisions_only'])}.**", ""] if ev.get("decisions_only") else []),
             "| eps | worst case (%) | papers' protocol (%) |", "| --- | --- | --- |"]
    for r in card["robust_acc"]:
        protocol = "-" if r["protocol"] is None else f"{r['protocol']:.2f}"
        lines.append(f"| {r['eps']}{unit} | {r['worst_case']:.2f} | {protocol} |")
    checks = card["checks"]
    lines += ["", "## Gradient-masking checks", "", f"{checks['summary']}.", ""]
    if checks["checks"]:
        lines += [f"At eps {format_eps(checks['eps'])}{unit} on {checks['n']} images:", "",
                  "| check | status | numbers |", "| --- | --- | --- |"]
        lines += [f"| {c['name']} | {c['status']} | {c['detail'].replace('|', '/')} |" for c in checks["checks"]]
    sw = card["software"]
    training = (["```json", json.dumps(card["training"], indent=1), "```"] if card["training"] is not None
                else ["Trained elsewhere (an external model): its training set and settings are not known here."])
    cost, collapse = card["training_cost"], card["collapse"]
    if cost is not None:
        training = [f"Cost: {cost['passes_per_image']:.0f} forward + backward passes per training image over "
                    f"{cost['epochs']} epochs ({cost['forward_per_example']:g} forward and "
                    f"{cost['backward_per_example']:g} backward per example drawn"
                    f"{', and the overfitting guard' if cost['guard_passes'] else ''}), "
                    f"{cost['seconds']:.0f} s of training steps.", "", *training]
    if collapse is not None:
        training = [f"**Catastrophic overfitting**: {collapse['warnings'][0]}.", "", *training]
    lines += ["", "## Training", "", *training, "",
              "## Software", "", f"robustgan {sw['robustgan']}, torch {sw['torch']}, Python {sw['python']} "
              f"({sw['platform']}).", ""]
    return "\n".join(lines)


def write_card(run_dir, card: dict) -> tuple[Path, Path]:
    run = RunDir(run_dir)
    atomic_write(run.file("model_card.json"), json.dumps(card, indent=1))
    atomic_write(run.file("model_card.md"), card_markdown(card))
    return run.file("model_card.json"), run.file("model_card.md")
