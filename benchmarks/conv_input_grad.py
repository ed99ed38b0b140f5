"""What an attack's input gradient costs per convolution on this CPU, with and without oneDNN
(mkldnn): forward, and forward + input gradient, for the first layers of the tests' tiny CNN and
of the C&W CNN (digits and MNIST are 1-channel 28x28). One thread, median of 20 runs.

    python benchmarks/conv_input_grad.py

An attack needs only the gradient with respect to the input; the parameters' gradients are
never computed (torch.autograd.grad with the input alone)."""

from __future__ import annotations

import statistics
import time
import warnings

import torch

LAYERS = [  # (in channels, out channels, side, stride, padding, batch, what)
    (1, 16, 28, 2, 1, 256, "tiny CNN conv1"),
    (16, 32, 14, 2, 1, 256, "tiny CNN conv2"),
    (1, 32, 28, 1, 0, 64, "C&W CNN conv1"),
    (32, 32, 26, 1, 0, 64, "C&W CNN conv2"),
    (32, 64, 12, 1, 0, 64, "C&W CNN conv3"),
]


def median_ms(fn, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    warnings.filterwarnings("ignore", message="TF32 acceleration")  # torch's note on Intel GPUs
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| layer | batch | oneDNN | forward ms | forward + input gradient ms | gradient / forward |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cin, cout, side, stride, pad, batch, what in LAYERS:
        conv = torch.nn.Conv2d(cin, cout, 3, stride, pad).requires_grad_(False)
        x = torch.rand(batch, cin, side, side, requires_grad=True)
        for enabled in (True, False):
            with torch.backends.mkldnn.flags(enabled=enabled):
                def forward():
                    with torch.no_grad():
                        conv(x)
                both = median_ms(lambda: torch.autograd.grad(conv(x).sum(), x))
                fwd = median_ms(forward)
            print(f"| {what} ({cin}->{cout}, {side}x{side}, stride {stride}) | {batch} | {'on' if enabled else 'off'} "
                  f"| {fwd:.2f} | {both:.2f} | {(both - fwd) / fwd:.1f} |")


if __name__ == "__main__":
    main()
