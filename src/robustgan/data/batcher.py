"""On-device batching and augmentation: the whole dataset is one uint8 tensor on the
training device; an epoch's randomness (order, flips, shifts) is drawn once, on a CPU
generator whose state is checkpointed, then moved to the device in one copy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, flip: torch.Tensor | None, offsets: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Random horizontal flip and random shift (zero padding + crop), batched.

    x: (B, C, H, W) float; flip: (B,) bool; offsets: (B, 2) int in [0, 2*pad] giving the
    crop's top-left corner in the padded image (pad means no shift).
    """
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if offsets is not None and pad > 0:
        b, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
        cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # advanced indexing over (batch, row, col) with channels sliced: (B, H, W, C)
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x.contiguous()


class Batcher:
    """Yields ``(x float (B, C, H, W) in [0, 1], y int64 (B,))`` on ``device``.

    ``shift`` is the maximum shift in pixels (e.g. 3 for +-10% of 28). With ``rank`` /
    ``world_size`` each process sees its own contiguous slice of every global batch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device="cpu", shuffle=True,
                 flip=False, shift=0, drop_last=False, seed=0, rank=0, world_size=1, channels_last=False):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.x = x.to(device)  # (N, C, H, W) uint8, stays on device
        self.y = y.to(device)
        self.batch_size, self.shuffle, self.flip, self.shift = batch_size, shuffle, flip, shift
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch: dict | None = None  # the current epoch's draws (CPU), kept until it ends
        self.position = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """The generator, plus the current epoch's draws and position when saved mid-epoch."""
        state = {"generator": self.generator.get_state(), "position": self.position}
        if self._epoch is not None:
            state["epoch"] = self._epoch
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.position = state.get("position", 0)
        self._epoch = state.get("epoch")

    def _draw_epoch(self) -> dict:
        n, gen = len(self.y), self.generator
        draws = {"order": torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)}
        if self.flip:
            draws["flips"] = torch.rand(n, generator=gen) < 0.5
        if self.shift:
            draws["offsets"] = torch.randint(0, 2 * self.shift + 1, (n, 2), generator=gen)
        return draws

    def __iter__(self):
        """Batches from ``position`` to the end of the epoch. The epoch's draws are kept
        until its last batch is handed out, so a checkpoint between batches resumes exactly."""
        if self._epoch is None:
            self._epoch, self.position = self._draw_epoch(), 0
        draws = {k: v.to(self.device) for k, v in self._epoch.items()}
        order, flips, offsets = draws["order"], draws.get("flips"), draws.get("offsets")
        n, batches = len(self.y), len(self)
        for b in range(self.position, batches):
            start = b * self.batch_size
            end = min(start + self.batch_size, n)
            # this rank's slice of the global batch
            per_rank = -(-(end - start) // self.world_size)
            lo, hi = start + self.rank * per_rank, min(start + (self.rank + 1) * per_rank, end)
            idx = order[lo:hi]
            x = self.x[idx].float().div_(255)
            x = augment_batch(x, flips[lo:hi] if flips is not None else None,
                              offsets[lo:hi] if offsets is not None else None, self.shift)
            x = x.contiguous(memory_format=self.memory_format)
            # the state a checkpoint taken after this batch must hold
            if b + 1 == batches:
                self._epoch, self.position = None, 0
            else:
                self.position = b + 1
            yield x, self.y[idx]
