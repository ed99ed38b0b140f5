"""What `robustgan.runtime.keep_freed_memory` buys on a CPU: PGD-AT steps of the C&W CNN (digits
shape, batch 64, PGD-3 at eps 0.2, SGD), each repeat in two fresh processes, glibc's default
allocator and the kept one, interleaved (default, kept, default, kept...) so background load hits
both alike. Reported per repeat: ms per step, page faults per step, CPU seconds in the kernel.

    python benchmarks/cpu_allocator.py                 # 3 repeats of 30 steps, 1 thread
    python benchmarks/cpu_allocator.py --repeats 5 --steps 60 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import torch
import torch.nn.functional as F
from robustgan.attacks import pgd
from robustgan.models.classifiers import cw_cnn
from robustgan.runtime import keep_freed_memory

mode, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
if mode == "kept":
    assert keep_freed_memory(), "glibc only"
torch.manual_seed(0)
model, x, y = cw_cnn(), torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
opt = torch.optim.SGD(model.parameters(), lr=0.01)


def step():
    x_adv = pgd(model.eval(), x, y, 0.2, 3, 0.05, best=False, check=False)  # (64, 1, 28, 28) in [0, 1]
    opt.zero_grad()
    F.cross_entropy(model.train()(x_adv), y).backward()
    opt.step()


for _ in range(3):  # warm-up: first-call costs and the heap's peak
    step()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
after, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(json.dumps({"ms": 1000 * seconds / steps, "faults": (after.ru_minflt - before.ru_minflt) / steps,
                  "sys_s": after.ru_stime - before.ru_stime}))
"""


def measure(mode: str, steps: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(steps), str(threads)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = {"default": [], "kept": []}
    for _ in range(args.repeats):
        for mode in rows:
            rows[mode].append(measure(mode, args.steps, args.threads))
    print(f"PGD-3 AT step, C&W CNN, batch 64, {args.threads} thread(s), {args.steps} steps x {args.repeats} repeats\n")
    print("| allocator | ms / step (each repeat) | page faults / step | kernel CPU s |")
    print("| --- | --- | --- | --- |")
    for mode, results in rows.items():
        times = ", ".join(f"{r['ms']:.0f}" for r in results)
        print(f"| {mode} | {times} | "
              f"{statistics.median(r['faults'] for r in results):.0f} | "
              f"{statistics.median(r['sys_s'] for r in results):.2f} |")
    ratios = [d["ms"] / k["ms"] for d, k in zip(rows["default"], rows["kept"])]
    print(f"\ndefault / kept time per step, per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
