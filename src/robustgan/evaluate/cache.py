"""Evaluation results cached per run: <run>/eval_cache.json maps a key built from
(attack, eps, steps, step size, restarts, n, seed) and the weights' hash to an accuracy,
so reports and curves never recompute what ``eval`` / ``curve`` / ``check`` measured."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

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
