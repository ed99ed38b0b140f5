"""Fast paths (channels_last, compile, no host sync in a step) and the benchmarks' helpers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from robustgan.attacks.threat import no_param_grads
from robustgan.config import load_config
from robustgan.train import fit
from tests.helpers import CONFIGS


def test_channels_last_eval_gives_the_same_accuracy(trained_tiny, digits):
    from robustgan.attacks import AttackSettings, Batching
    from robustgan.evaluation import robust_accuracy

    _, _, xt, yt = digits
    model = copy.deepcopy(trained_tiny)
    pgd = AttackSettings("pgd", steps=5)
    plain = robust_accuracy(model, xt, yt, 0.1, pgd, Batching(batch_size=128))
    fast = robust_accuracy(model, xt, yt, 0.1, pgd, Batching(batch_size=128, channels_last=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert abs(plain - fast) <= 2 / len(yt)  # float rounding may flip a borderline image


def test_channels_last_and_compile_reach_every_network(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: compiled.append(type(self).__name__))
    cfg = load_config(CONFIGS / "gan-at-digits-grad.toml", ["train.channels_last=true", "train.compile=true",
                                                            "train.steps=2", "data.train_limit=64",
                                                            "train.eval_limit=16", "train.eval_eps=0"])
    run = fit(cfg, tmp_path / "run", quiet=True)
    assert sorted(compiled) == ["CWCNN", "PerturbationGenerator"]
    assert (run.path / "DONE").is_file()


# ------------------------------------------------------------------ benchmark helpers
BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.append(str(BENCHMARKS))  # appended: its run.py must not shadow anything


def test_cpu_steps_take_no_fresh_pages_once_warm():
    """keep_freed_memory (the CLI, fit and the tests call it): a PGD-AT step of the C&W CNN frees
    and reallocates its activations without page faults. Measured without it: ~5000 faults a
    step here, ~21000 in a fresh process (BENCHMARKS.md, "CPU allocator")."""
    import platform
    import resource

    import torch.nn.functional as F

    from robustgan.attacks import pgd
    from robustgan.models.classifiers import cw_cnn
    from robustgan.runtime import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert keep_freed_memory()
    torch.manual_seed(0)
    model, x, y = cw_cnn(), torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        x_adv = pgd(model.eval(), x, y, 0.2, 3, 0.05, best=False, check=False)
        opt.zero_grad()
        F.cross_entropy(model.train()(x_adv), y).backward()
        opt.step()

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000


def test_flop_counter_counts_forward_input_and_weight_gradients():
    from train_throughput import FlopCounter

    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    x = torch.rand(2, 3, 10, 10)
    forward = 2 * 2 * 8 * 8 * 8 * 3 * 9  # 2 FLOPs per multiply-add: N * Cout * H'W' * Cin * k * k
    with FlopCounter() as counter:
        conv(x)
    assert counter.flops == forward
    x.requires_grad_(True)
    with FlopCounter() as counter, no_param_grads(conv):  # what an attack step does
        torch.autograd.grad(conv(x).sum(), x)
    assert counter.flops == 2 * forward
    with FlopCounter() as counter:  # a training step through the first layer: weight gradient too
        conv(x).sum().backward()
    assert counter.flops == 3 * forward


def test_atgan_costs_more_flops_than_pgd_at_by_the_generator_and_the_second_d_pass():
    """Algorithm 1's arithmetic: ATGAN's PGD goes through G and D, and its D step runs D on
    real and generated images; so on digits its step costs well above PGD-AT's, on CIFAR-10
    (G much smaller than ResNet-18) less so, but never below PGD-AT's."""
    from train_throughput import Case, flops_per_image

    cpu = torch.device("cpu")
    ratio = {}
    for dataset in ("digits", "cifar10"):
        pgd_at, atgan = (flops_per_image(Case(p, p), cpu, batch_size=2) for p in (f"pgd-at-{dataset}",
                                                                                    f"atgan-{dataset}"))
        ratio[dataset] = atgan / pgd_at
    assert 1.6 < ratio["digits"] < 1.9  # measured 1.76
    assert 1.3 < ratio["cifar10"] < 1.55  # measured 1.42
    assert ratio["cifar10"] < ratio["digits"]


def test_gpu_epoch_benchmark_runs_on_cpu():
    """The H200 measurement's script, on the CPU path: counted FLOPs, the limit, the table."""
    import gpu_epoch

    variants = {k: gpu_epoch.VARIANTS[k] for k in ("fp32",)}  # bf16 is slow on a CPU
    result = gpu_epoch.run(torch.device("cpu"), [2], steps=1, repeats=1, compile_=False, peak_tflops=100.0,
                           variants=variants)
    assert 18 < result["gflop_per_image"] < 20  # PGD-7 AT of PreAct ResNet-18 at 32x32: 7 x 2.2 + 3.3
    assert result["epoch_s_at_peak"] == pytest.approx(50_000 * result["gflop_per_image"] / 100e3)
    assert [r["variant"] for r in result["rows"]] == list(variants)
    assert all(r["img_s_median"] > 0 and r["epoch_s"] == pytest.approx(50_000 / r["img_s_median"])
               for r in result["rows"])
    assert "s per 50k epoch" in gpu_epoch.report(result)


# ------------------------------------------------------------------ no host sync inside a step
class ScalarReads(TorchDispatchMode):
    """Records reads of a tensor's value by the host: ``.item()``, ``float(t)``, ``bool(t)``
    (``if t:``) and ``torch.equal`` all dispatch one of these ops. On a GPU each is a sync."""

    OPS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
           torch.ops.aten.equal.default)

    def __init__(self, allowed: set[int]):
        super().__init__()
        self.allowed, self.reads = allowed, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS and id(args[0]) not in self.allowed:
            self.reads.append(f"{func} on a tensor of shape {tuple(args[0].shape)}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("preset", ["standard-digits", "pgd-at-digits-frac", "atgan-digits", "gan-at-digits-xz",
                                    "gan-at-digits-grad-dual"])
def test_a_training_step_reads_no_tensor_value_on_the_host(preset):
    """Issue 8: no .item() / host sync inside a step. The one exception is torch's Adam
    reading its own step counters, which live on the CPU even when training on a GPU."""
    from robustgan.methods import method_class
    from robustgan.runtime import geometry_for

    cfg = load_config(CONFIGS / f"{preset}.toml", ["train.batch_size=8"])
    method = method_class(cfg.method.name)(cfg, geometry_for(cfg.data), torch.device("cpu"))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    method.step(x, y)  # creates the optimizers' state
    counters = {id(state["step"]) for opt in method.optimizers().values() for state in opt.state.values()
                if isinstance(state.get("step"), torch.Tensor)}
    with ScalarReads(allowed=counters) as reads:
        metrics = method.step(x, y)
    assert reads.reads == []
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
