"""Per-sample evaluation results cached per run: <run>/eval_cache.json maps a key built from
every setting that changes a number (``AttackSettings.key``: attack, eps, steps, step size,
restarts, targets, queries, n, seed, and the attack's version) to which test points stayed correct, for one hash of the
weights. Reports, curves and checks never recompute what ``eval`` / ``curve`` / ``check``
measured, and adding an eps point to a curve computes only that point.

Safe under concurrent writers (two ``eval`` processes, torchrun ranks): every write
re-reads the file under an exclusive lock (``fcntl.flock`` on eval_cache.json.lock), merges
its entries and replaces the file atomically, so no entry is ever lost. Two results for
the same key are merged point by point with AND: a point one attack fooled is fooled."""

from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from robustgan.attacks import ATTACK_VERSION, ATTACKS
from robustgan.runs import RunDir, atomic_write
from robustgan.runtime import model_identity

CACHE = "eval_cache.json"


def weights_digest(run: RunDir) -> str:
    return model_identity(run.path)


def cache_key(**settings) -> str:
    norm = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in sorted(settings.items())}
    spec = ATTACKS.get(settings.get("attack"))
    return json.dumps({**norm, "version": spec.version if spec else ATTACK_VERSION}, sort_keys=True)


def pack(mask: torch.Tensor) -> str:
    return np.packbits(mask.numpy().astype(np.uint8)).tobytes().hex()


def unpack(text: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` + '.lock' for the block (blocks until it is free)."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EvalCache:
    """The results for one set of weights, kept in ``path`` (for a run: <run>/eval_cache.json)."""

    def __init__(self, run_dir: str | Path | None = None, *, path: Path | None = None, digest: str | None = None):
        if run_dir is not None:
            run = RunDir(run_dir)
            path, digest = run.file(CACHE), weights_digest(run)
        self.path, self.digest = Path(path), digest
        self.entries = self._read()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data.get("entries", {}) if data.get("weights") == self.digest else {}

    def partial(self) -> EvalCache:
        """A second cache beside this one (eval_cache.partial.json) for results on part of the
        points, e.g. one batch of a curve: what a killed evaluation had finished."""
        return EvalCache(path=self.path.with_name(self.path.stem + ".partial.json"), digest=self.digest)

    def get(self, **settings) -> torch.Tensor | None:
        """Which of the n points stayed correct (bool (n,)), or None if not measured."""
        hit = self.entries.get(cache_key(**settings))
        return None if hit is None else unpack(hit, settings["n"])

    def matching(self, **settings) -> dict[float, torch.Tensor]:
        """Every cached eps measured with these settings (all but eps): {eps: mask}."""
        want, found = json.loads(cache_key(**settings)), {}
        for key, value in self.entries.items():
            entry = json.loads(key)
            eps = entry.pop("eps", None)
            if eps is not None and entry == want:
                found[math.inf if eps == "inf" else float(eps)] = unpack(value, settings["n"])
        return found

    def results(self) -> list[tuple[dict, torch.Tensor]]:
        """Every cached result: (its settings, which points stayed correct)."""
        found = []
        for key, value in self.entries.items():
            settings = json.loads(key)
            if settings.get("eps") == "inf":
                settings["eps"] = math.inf
            found.append((settings, unpack(value, settings["n"])))
        return found

    def ensemble_eps(self, n: int, norm: str = "linf") -> list[float]:
        """Every finite eps > 0 the ensemble's results are cached at for the first ``n`` test points,
        in ``norm``."""
        return sorted({float(st["eps"]) for st, _ in self.results()
                       if st.get("attack") == "ensemble" and st.get("n") == n and 0 < st["eps"] < math.inf
                       and st.get("norm", "linf") == norm})

    def highest_accuracies(self, n: int, at_least: float, at_most: float = 1.0,
                           norm: str = "linf") -> dict[float, float]:
        """{eps: accuracy} of every result cached for the first ``n`` test points at eps in
        [at_least, at_most] in ``norm``, the highest over attacks (the bound check holds a run's
        curves to these)."""
        highest: dict[float, float] = {}
        for settings, mask in self.results():
            eps = settings.get("eps")
            if (settings.get("n") == n and isinstance(eps, (int, float)) and at_least <= eps <= at_most and n
                    and settings.get("norm", "linf") == norm):
                highest[float(eps)] = max(highest.get(float(eps), 0.0), mask.float().mean().item())
        return highest

    def discard(self, settings: list[dict]) -> None:
        """Remove these results from the file under the lock (a finished curve's batches)."""
        with locked(self.path):
            self.entries = self._read()
            for one in settings:
                self.entries.pop(cache_key(**one), None)
            self._write()

    def _write(self) -> None:
        atomic_write(self.path, json.dumps({"weights": self.digest, "entries": self.entries}, indent=0))

    def put(self, mask: torch.Tensor, **settings) -> None:
        self.put_many([(mask, settings)])

    def put_many(self, results: list[tuple[torch.Tensor, dict]]) -> None:
        """Merge results into the file under the lock (re-read, AND per key, atomic replace)."""
        with locked(self.path):
            self.entries = self._read()
            for mask, settings in results:
                key, new = cache_key(**settings), mask.bool().cpu()
                old = self.entries.get(key)
                if old is not None:
                    new = new & unpack(old, len(new))
                self.entries[key] = pack(new)
            self._write()
