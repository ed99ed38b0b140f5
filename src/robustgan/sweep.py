"""`robustgan sweep`: one run per (method, eps_t), resumable. Methods share the config's
data, backbone, optimizer and attack settings; keys a method does not have are dropped
(so `pgd_at` and `atgan` from one ATGAN preset differ only in the method, as in paper 000
where each baseline is the discriminator's backbone without the GAN)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from robustgan.config import Config, from_dict, method_config_class, to_dict
from robustgan.eps import EPS_T_GRIDS, format_eps
from robustgan.runs import RunDir
from robustgan.train import ensure_trained


def run_name(method: str, frac: float, eps_t: float) -> str:
    return f"{method}{'-frac' if frac < 1 else ''}-eps{format_eps(eps_t).replace('/', '_')}"


def variant(cfg: Config, method: str, eps_t: float, frac: float | None) -> Config:
    raw = to_dict(cfg)
    fields = {f.name for f in dataclasses.fields(method_config_class(method))}
    raw["method"] = {k: v for k, v in raw["method"].items() if k in fields and v is not None}
    raw["method"]["name"] = method
    if "eps" in fields:
        raw["method"]["eps"] = eps_t
    if frac is not None and "frac" in fields:
        raw["method"]["frac"] = frac
    return from_dict(raw)


def plan(cfg: Config, eps_t: list[float] | None, methods: list[str] | None, fracs: list[float | None]) -> list:
    eps_t = eps_t or EPS_T_GRIDS.get(cfg.data.name, [getattr(cfg.method, "eps", 0.0)])  # no paper grid: the config's
    methods = methods or [cfg.method.name]
    out = []
    for method in methods:
        for frac in fracs:
            for e in eps_t:
                v = variant(cfg, method, e, frac)
                out.append((run_name(method, getattr(v.method, "frac", 1.0), e), v))
    return out


def run_sweep(cfg: Config, out: Path, eps_t=None, methods=None, fracs=(None,), quiet=False, log=print) -> list[Path]:
    runs = []
    for name, v in plan(cfg, eps_t, methods, list(fracs)):
        path = Path(out) / name
        run = RunDir(path)
        runs.append(path)
        if run.is_complete:
            log(f"{name}: done, skipped")
            continue
        log(f"{name}: {'resuming' if run.is_started else 'training'}")
        ensure_trained(v, path, quiet=quiet)
    return runs
