"""Standard AutoAttack as the reference, per eps and per point, cached: AutoAttack does not change
when robustgan does, and it is the slow side of every comparison (10-60 min per model and grid on
2 CPU cores), so each (model weights, images, eps) is attacked once and its verdicts and passes
are kept under runs/aa-reference/ (JSON, keyed by a hash of the weights and the images).

    python benchmarks/aa_reference.py --models pgd-at-digits,tiny-threshold --limit 200   # fill the cache

benchmarks/eval_engine.py and benchmarks/ensemble_savings.py read it through ``reference``.
Passes are counted as AutoAttack's are counted everywhere in benchmarks/: every row through the
model is a forward pass, a row with an input gradient also a backward pass."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "aa-reference"
VERSION = 1  # raise when the reference attack or its counting changes


class Counted(nn.Module):
    """The model, counting forward rows and rows followed by an input gradient (backward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.forwards, self.backwards = model, 0, 0

    def forward(self, x):
        self.forwards += len(x)
        if torch.is_grad_enabled() and x.requires_grad:
            self.backwards += len(x)
        return self.model(x)


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """A hash of the weights (and buffers), the images and the labels."""
    h = hashlib.sha256(f"v{VERSION}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(x.cpu().contiguous().numpy().tobytes())
    h.update(y.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float],
              cache: Path = CACHE, norm: str = "linf") -> dict[float, dict]:
    """{eps: {"correct": (n,) bool, "backward", "forward", "seconds"}} of standard AutoAttack in
    ``norm`` on ``model`` (eval mode) at each eps, each eps attacked on its own as AutoAttack is
    run; x uint8 or float in [0, 1]. Read from ``cache`` where there, else computed and written."""
    from robustgan.attacks.autoattack import autoattack

    xf = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    key = fingerprint(model, xf, y)
    found = {}
    for e in eps:
        path = cache / f"{name}-{key}-{'' if norm == 'linf' else norm + '-'}{e:g}.json"
        if path.is_file():
            got = json.loads(path.read_text())
        else:
            counted = Counted(model).eval()
            start = time.perf_counter()
            x_adv = autoattack(counted, xf, y, e, num_classes=10, norm=norm)
            with torch.no_grad():
                correct = model(x_adv).argmax(1) == y
            got = {"correct": correct.tolist(), "backward": counted.backwards,
                   "forward": counted.forwards, "seconds": time.perf_counter() - start}
            cache.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(got))
            print(f"    autoattack {name} eps {e:g} ({norm}): {got['seconds']:.0f} s, "
                  f"{100 * correct.float().mean():.1f}%", file=sys.stderr, flush=True)
        found[e] = {**got, "correct": torch.tensor(got["correct"], dtype=torch.bool)}
    return found


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ensemble_savings import GRID, models

    from robustgan.data import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="pgd-at-digits,tiny-threshold,tiny-softmax,tiny-x1e4,tiny,atgan-digits")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--eps", default=",".join(map(str, GRID)))
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    args = parser.parse_args(argv)
    x, y = load("digits", split="test")
    x, y = x[:args.limit], y[:args.limit]
    eps = [float(e) for e in args.eps.split(",")]
    for name, model in models(args.models.split(",")).items():
        got = reference(name, model, x, y, eps, norm=args.norm)
        print(f"{name}: " + ", ".join(f"{e:g} {100 * g['correct'].float().mean():.1f}%" for e, g in got.items()))


if __name__ == "__main__":
    main()
