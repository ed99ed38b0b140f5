"""Evaluation results cached per run: <run>/eval_cache.json maps a key built from
(attack, eps, steps, step size, restarts, n, seed) and the weights' hash to an accuracy,
so reports and curves never recompute what ``eval`` / ``curve`` / ``check`` measured."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from robustgan.attacks import default_step_size, robust_accuracy
from robustgan.runs import MODEL, RunDir, atomic_write

CACHE = "eval_cache.json"


def weights_digest(run: RunDir) -> str:
    digest = hashlib.sha256()
    with open(run.file(MODEL), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_key(**settings) -> str:
    norm = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in sorted(settings.items())}
    return json.dumps(norm, sort_keys=True)


class EvalCache:
    def __init__(self, run_dir: str | Path):
        self.run = RunDir(run_dir)
        self.path = self.run.file(CACHE)
        self.digest = weights_digest(self.run)
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.entries = data.get("entries", {}) if data.get("weights") == self.digest else {}

    def get(self, **settings):
        return self.entries.get(cache_key(**settings))

    def put(self, value, **settings) -> None:
        self.entries[cache_key(**settings)] = value
        payload = json.dumps({"weights": self.digest, "entries": self.entries}, indent=0)
        atomic_write(self.path, payload)


def cached_accuracy(cache: EvalCache, model, x, y, *, attack: str, eps: float = 0.0, steps: int = 10,
                    step_size: float | None = None, restarts: int = 1, seed: int = 0, **kw) -> float:
    """``robust_accuracy`` through a run's evaluation cache (same settings, same weights:
    same number, computed once). The seed fixes random starts."""
    if attack == "none" or eps == 0:
        attack, eps, steps, step_size, restarts = "none", 0.0, 0, None, 1
    elif attack != "pgd":
        steps, step_size, restarts = 0, None, 1
    elif step_size is None:
        step_size = default_step_size(eps, steps)
    settings = dict(attack=attack, eps=float(eps), steps=steps, step_size=step_size, restarts=restarts, n=len(y),
                    seed=seed)
    hit = cache.get(**settings)
    if hit is not None:
        if kw.get("progress") is not None:
            kw["progress"].advance(kw["task"], len(y))
        return hit
    torch.manual_seed(seed)
    value = robust_accuracy(model, x, y, attack=attack, eps=eps, steps=max(steps, 1), step_size=step_size,
                            restarts=restarts, **kw)
    cache.put(value, **settings)
    return value
