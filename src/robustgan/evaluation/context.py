"""The evaluation context: what every evaluation in one command shares, built once (by the CLI
from its options, or with defaults from a notebook) and passed as one object, instead of
device, batch size, limit, data root and a progress display travelling through every call by
hand. What the attacks do (their seed included) is the settings' (``AttackSettings``,
``CheckSettings``), not the context's."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.progress import Progress

Advance = Callable[[int], None]  # called with the number of points (or point-eps pairs) just done


@dataclass(frozen=True)
class EvalContext:
    device: torch.device | str = "cpu"
    batch_size: int = 256  # points per forward pass (what the device's memory holds)
    limit: int = 0  # evaluate the first N test images (0: all)
    data_root: Path | None = None  # where the dataset's files are
    channels_last: bool = False  # the model and its batches in that memory format (faster convolutions)
    # (description, total) -> an Advance for one progress bar; None: no progress shown
    progress: Callable[[str, int], Advance] | None = None

    def advance(self, description: str, total: int) -> Advance | None:
        """A new progress bar's callback, or None when nothing is shown."""
        return None if self.progress is None else self.progress(description, total)


@contextmanager
def evaluation(device, *, limit: int = 0, data_root: Path | None = None, batch_size: int = 256,
               console: Console | None = None, show: bool = True, channels_last: bool = False) -> Iterator[EvalContext]:
    """A command's one evaluation context, with progress bars on ``console`` (default: stderr)
    while it lasts; ``show=False`` shows none (the non-main ranks under torchrun)."""
    with Progress(console=console or Console(stderr=True), transient=True, disable=not show) as bars:
        def bar(description: str, total: int) -> Advance:
            task = bars.add_task(description, total=total)
            return lambda done: bars.advance(task, done)

        yield EvalContext(device, batch_size, limit, data_root, channels_last, bar)
