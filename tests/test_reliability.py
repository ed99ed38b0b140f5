"""Issue 9: crash safety, divergence, interrupts, safe loading and bad input.

The crash tests run the real CLI in subprocesses and kill them (SIGKILL at random moments,
SIGKILL in the middle of a checkpoint write, SIGINT), then resume, and compare the final
weights bitwise with an uninterrupted run."""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import robustgan
from robustgan.config import load_config
from robustgan.errors import Diverged, RunError
from robustgan.runs import CHECKPOINT, RunDir, checkpoint_step, load_state
from robustgan.train import fit
from tests.helpers import CONFIGS, assert_one_line, run_main
from tests.test_data import make_mnist, write_idx

ROOT = Path(__file__).parent.parent
# PGD-2 AT with augmentation on 192 digits, batch 32: 6 steps per epoch, 3 epochs, a checkpoint every
# 4 steps (so some land mid-epoch) and at every epoch end.
SMALL = ["train.epochs=3", "data.train_limit=192", "train.batch_size=32", "method.steps=2", "data.shift=2", "train.checkpoint_every=4",
         "train.eval_every=100", "train.eval_limit=32", "train.eval_eps=0", "train.log_every=2"]


def train_args(out: Path, resume: bool) -> list[str]:
    """The CLI arguments of the SMALL run, or of resuming it."""
    if resume:
        return ["train", "--out", str(out), "--resume", "-q"]
    sets = [a for s in SMALL for a in ("--set", s)]
    return ["train", "-c", str(CONFIGS / "pgd-at-digits.toml"), "--out", str(out), "-q", *sets]


def train_cmd(out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "robustgan", *train_args(out, resume)]


def weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed run differs from the uninterrupted one"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, trained in this process (the CLI's code path, the killed processes'
    thread count: helpers.configure_torch); and how long its training took."""
    out = tmp_path_factory.mktemp("ref") / "run"
    from robustgan.cli import main

    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(out, False))
    assert exit_info.value.code in (0, None)
    return out, time.perf_counter() - start


def holds_the_lock(proc: subprocess.Popen, out: Path, timeout: float = 120) -> bool:
    """Wait until ``proc`` holds the run's lock: its interpreter has started and ``fit`` has
    begun (it takes the lock before loading data). False if it finished first."""
    lock, deadline = out / "lock", time.time() + timeout
    while proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return True
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the training process took no lock in {timeout} s")
        time.sleep(0.01)
    return False


def finish(out: Path, monkeypatch, capsys) -> None:
    """Resume until the run completes (a later kill may have left it unfinished), through the
    CLI in this process (the same thread count as the killed processes: helpers.configure_torch)."""
    done = run_main(train_args(out, (out / "config.toml").is_file()), monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert (out / "DONE").is_file()


# ------------------------------------------------------------------ crash safety
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(reference, tmp_path, monkeypatch, capsys):
    """Two kills at random moments (one seed: a second seed, once here, cost 20 s of the suite
    for the same path; the most dangerous moment, mid-write, is its own test below)."""
    ref, wall = reference
    rng = random.Random(1)
    out = tmp_path / "run"
    for _ in range(2):
        proc = subprocess.Popen(train_cmd(out, (out / "config.toml").is_file()), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if holds_the_lock(proc, out):  # then a moment within the reference run's fit (data, networks, epochs)
            time.sleep(rng.uniform(0, wall))
        if proc.poll() is not None:
            assert proc.returncode == 0
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finish(out, monkeypatch, capsys)
    assert_same_weights(out, ref)
    epochs = [r["epoch"] for r in RunDir(out).metrics() if r.get("split") == "train"]
    assert epochs == [1, 2, 3]  # records of redone epochs are not duplicated


def test_sigkill_during_checkpoint_write_keeps_previous(reference, tmp_path, monkeypatch, capsys):
    write = 3  # checkpoints at steps 4 (mid-epoch), 6 (epoch end), 8, 12...: kill while writing step 8's
    ref, _ = reference
    out = tmp_path / "run"
    cmd = train_cmd(out, False)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_during_write.py"), str(write), *cmd[3:]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (out / (CHECKPOINT + ".tmp")).is_file()  # the torn write
    assert checkpoint_step(out / CHECKPOINT) == 6  # the previous good checkpoint
    load_state(out / CHECKPOINT)  # still whole
    finish(out, monkeypatch, capsys)
    assert_same_weights(out, ref)


def test_ctrl_c_saves_checkpoint_and_prints_resume_command(reference, tmp_path, monkeypatch, capsys):
    ref, _ = reference
    out = tmp_path / "run"
    script = Path(sys.executable).with_name("robustgan")  # the installed console script, as users start it
    proc = subprocess.Popen([str(script), *train_args(out, False)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:  # first epoch done
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"Resume with: robustgan train --out {out} --resume" in stderr
    step = checkpoint_step(out / CHECKPOINT)
    assert f"interrupted at step {step}" in stderr or "interrupted after epoch" in stderr
    finish(out, monkeypatch, capsys)
    assert_same_weights(out, ref)


def test_checkpoint_every_does_not_change_training(tmp_path):
    def cfg(every):
        return load_config(CONFIGS / "standard-digits.toml", ["train.epochs=2", "data.train_limit=256",
                                                              f"train.checkpoint_every={every}", "train.eval_limit=16"])
    fit(cfg(0), tmp_path / "a", quiet=True)
    fit(cfg(3), tmp_path / "b", quiet=True)
    assert_same_weights(tmp_path / "a", tmp_path / "b")


# ------------------------------------------------------------------ divergence and collapse
def test_divergence_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from robustgan.methods.standard import Standard

    real_step = Standard.step

    def poisoned(self, x, y):
        metrics = real_step(self, x, y)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= 9:  # 4 steps per epoch: step 9 opens epoch 3, after the step-8 checkpoint
            metrics["loss"] = metrics["loss"] * float("nan")
        return metrics

    monkeypatch.setattr(Standard, "step", poisoned)
    cfg = load_config(CONFIGS / "standard-digits.toml", ["train.epochs=4", "data.train_limit=256",
                                                        "train.eval_limit=16", "train.log_every=100"])
    with pytest.raises(Diverged, match=r"loss became non-finite at step 9 \(epoch 3\).*last good checkpoint \(step 8\)"):
        fit(cfg, tmp_path / "run", quiet=True)
    good = load_state(tmp_path / "run" / CHECKPOINT)
    assert good["step"] == 8
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())
    assert not (tmp_path / "run" / "lock").exists()


def test_divergence_on_the_command_line_exits_3(tmp_path, monkeypatch, capsys):
    done = run_main(["train", "-c", CONFIGS / "standard-digits.toml", "--out", tmp_path / "run", "-q",
                     "--set", "optim.name=sgd", "--set", "optim.lr=1e12", "--set", "train.log_every=5"], monkeypatch, capsys)
    assert_one_line(done, "error: training diverged: loss became non-finite at step", code=3)
    assert re.fullmatch(r"error: training diverged: loss became non-finite at step \d+ \(epoch 1\); no checkpoint "
                        r"had been written yet\. Lower optim\.lr .*", done.stderr.strip())


def test_collapse_is_a_warning_in_metrics(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from robustgan.methods import method_class
    from robustgan.methods.standard import Standard

    atgan, gan_at = method_class("atgan"), method_class("gan_at")
    assert atgan.collapse_warnings(None, {"G_out_std": 0.2, "D_real_acc": 0.7, "D_fake_acc": 0.8}) == []
    found = atgan.collapse_warnings(None, {"G_out_std": 1e-5, "D_real_acc": 1.0, "D_fake_acc": 1.0})
    assert len(found) == 2 and "generator collapse" in found[0] and "discriminator pinned" in found[1]
    fake = SimpleNamespace(cfg=SimpleNamespace(method=SimpleNamespace(eps=0.3)), generators=[0, 1])
    found = gan_at.collapse_warnings(fake, {"G0_std": 0.1, "G1_std": 1e-6})
    assert len(found) == 1 and found[0].startswith("generator 1 collapse")

    monkeypatch.setattr(Standard, "collapse_warnings", lambda self, averages: [f"loss {averages['loss']:.1f}"])
    cfg = load_config(CONFIGS / "standard-digits.toml", ["train.epochs=1", "data.train_limit=64", "train.eval_limit=16"])
    fit(cfg, tmp_path / "run", quiet=True)
    record = RunDir(tmp_path / "run").metrics()[0]
    assert record["split"] == "train" and record["warnings"][0].startswith("loss ")


# ------------------------------------------------------------------ safe loading
class RunsCode:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_checkpoints_never_run(tmp_path, digits_runs, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text((digits_runs / "standard" / "config.toml").read_text())
    (run / "model.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(RunError, match="pickled checkpoints are never loaded"):
        robustgan.load(run)
    (run / CHECKPOINT).write_bytes(pickle.dumps(RunsCode(marker)))  # a pickle posing as the checkpoint
    done = run_main(["train", "--out", run, "--resume", "-q"], monkeypatch, capsys)
    assert done.returncode == 2 and "is not a readable safetensors checkpoint" in done.stderr
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_source():
    source = ROOT / "src" / "robustgan"
    for path in source.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f"{path} calls eval/exec"
        assert "pickle.load(" not in text and "pickle.loads(" not in text, f"{path} unpickles"


# ------------------------------------------------------------------ bad input: one line, non-zero exit
def bad_mnist(root: Path, case: str) -> Path:
    make_mnist(root, n=4)
    images = root / "train-images-idx3-ubyte"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-10])
    elif case == "magic":
        raw = bytearray(images.read_bytes())
        raw[3] = 0x01
        images.write_bytes(bytes(raw))
    elif case == "size":
        write_idx(images, np.zeros((4, 32, 32), np.uint8))
    elif case == "label":
        write_idx(root / "train-labels-idx1-ubyte", np.array([1, 2, 3, 12], np.uint8))
    elif case == "missing":
        images.unlink()
    elif case == "gzip":
        images.unlink()
        (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    return root


@pytest.mark.parametrize("case,message", [
    ("missing", "mnist: missing train-images-idx3-ubyte"),
    ("gzip", "train-images-idx3-ubyte.gz is not a valid gzip file"),
    ("truncated", "bytes, header [4, 28, 28] says"),
    ("magic", "has magic 0x00000801, expected 0x00000803"),
    ("size", "holds 32x32 images, expected 28x28"),
    ("label", "label out of range [1, 12], expected 0..9"),
])
def test_bad_dataset_files(tmp_path, case, message, monkeypatch, capsys):
    root = bad_mnist(tmp_path / "data", case)
    done = run_main(["train", "-c", CONFIGS / "standard-mnist.toml", "--data-root", root, "--out", tmp_path / "run", "-q"],
                    monkeypatch, capsys)
    assert_one_line(done, message)


@pytest.mark.parametrize("args,message", [
    (["eval", "{run}", "--eps", "-0.1"], "eps must be in [0, 1]"),
    (["eval", "{run}", "--eps", "1.5"], "eps must be in [0, 1]"),
    (["eval", "{run}", "--eps", "nan"], "eps must be in [0, 1]"),
    (["eval", "{run}", "--steps", "0"], "--steps must be positive, got 0"),
    (["check", "{run}", "--ensemble-steps", "0"], "--ensemble-steps must be positive, got 0"),
    (["report", "{run}", "--ensemble-steps", "0"], "--ensemble-steps must be positive, got 0"),
    (["train", "-c", "configs/pgd-at-digits.toml", "--set", "method.steps=0"], "method.steps must be positive"),
    (["train", "-c", "configs/pgd-at-digits.toml", "--set", "method.frac=1.5"], "method.frac must be in [0, 1]"),
    (["train", "-c", "configs/pgd-at-digits.toml", "--set", "method.eps=nan"], "method.eps must be in [0, 1]"),
    (["train", "-c", "configs/pgd-at-digits.toml", "--set", "train.bogus=1"], "train.bogus"),
    (["train", "-c", "configs/pgd-at-digits.toml", "--set", "nosuch.key=1"], "nosuch"),
    (["eval", "{tmp}"], "is not a run directory"),
    (["curve", "{tmp}"], "is not a run directory"),
    (["eval", "{mismatch}", "--eps", "0.1"], "does not match config.toml"),
    (["predict", "{run}", "{tmp}/not-an-image.png"], "not-an-image.png: not a readable image"),
    (["predict", "{run}", "{tmp}/absent.png"], "absent.png: no such image file"),
])
def test_bad_input_on_the_command_line(tmp_path, digits_runs, args, message, monkeypatch, capsys):
    (tmp_path / "not-an-image.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "config.toml").write_text((digits_runs / "standard" / "config.toml").read_text()
                                          .replace('name = "cw_cnn"', 'name = "shallow_vgg"'))
    (mismatch / "model.safetensors").write_bytes((digits_runs / "standard" / "model.safetensors").read_bytes())
    args = [a.format(run=digits_runs / "standard", tmp=tmp_path, mismatch=mismatch) for a in args]
    assert_one_line(run_main(args, monkeypatch, capsys), message)


def test_nan_and_out_of_range_images_are_refused_by_attacks(trained_tiny, digits):
    from robustgan.attacks import AttackError, fgsm, pgd
    from robustgan.attacks import AttackSettings
    from robustgan.evaluation import robust_accuracy

    _, _, xt, yt = digits
    x, y = xt[:8].clone(), yt[:8]
    x[0, 0, 0, 0] = float("nan")
    for attack in (lambda: pgd(trained_tiny, x, y, 0.1, 3, 0.05), lambda: fgsm(trained_tiny, x, y, 0.1),
                   lambda: robust_accuracy(trained_tiny, x, y, 0.1, AttackSettings(steps=2))):
        with pytest.raises(AttackError, match="NaN or infinite"):
            attack()
    with pytest.raises(AttackError, match=r"in \[0, 1\].*\[0, 255\]"):
        pgd(trained_tiny, xt[:8] * 255, y, 0.1, 3, 0.05)
    with pytest.raises(AttackError, match="divide uint8 images by 255"):
        fgsm(trained_tiny, (xt[:8] * 255).to(torch.uint8), y, 0.1)
    with pytest.raises(AttackError, match="labels must be an int64 tensor of shape"):
        fgsm(trained_tiny, xt[:8], y[:4], 0.1)
    with pytest.raises(ValueError):  # AttackError is also a ValueError for library callers
        fgsm(trained_tiny, xt[:8], y, -1.0)


def test_wrong_channel_count_in_dataset_file(tmp_path, monkeypatch, capsys):
    import scipy.io

    for split in ("train", "test"):  # grey SVHN images: (32, 32, 1, N)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": np.zeros((32, 32, 1, 4), np.uint8), "y": np.ones((4, 1), np.uint8)})
    done = run_main(["train", "-c", CONFIGS / "standard-svhn.toml", "--data-root", tmp_path, "--out", tmp_path / "run",
                     "-q"], monkeypatch, capsys)
    assert_one_line(done, "X has shape (32, 32, 1, 4) uint8, expected (32, 32, 3, N) uint8")


def test_full_disk_keeps_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    import robustgan.runs as runs
    from robustgan.cli import main

    out = tmp_path / "run"
    args = ["robustgan", "train", "-c", str(CONFIGS / "standard-digits.toml"), "--out", str(out), "-q",
            "--set", "train.epochs=2", "--set", "data.train_limit=128", "--set", "train.eval_limit=16"]
    real_open, written = open, []

    def full_after_first_checkpoint(path, mode="r", *a, **kw):
        if "w" in mode and str(path).endswith(CHECKPOINT + ".tmp"):
            written.append(path)
            if len(written) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(runs, "open", full_after_first_checkpoint, raising=False)
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write") and "the disk is full" in err and "previous version is kept" in err
    assert load_state(out / CHECKPOINT)["epoch"] == 0 and not (out / (CHECKPOINT + ".tmp")).exists()


def test_full_disk_for_real_on_a_tiny_tmpfs(tmp_path, monkeypatch, capsys):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        done = run_main(["train", "-c", CONFIGS / "standard-digits.toml", "--out", mount / "run", "-q", "--set",
                         "train.epochs=1", "--set", "data.train_limit=64", "--set", "train.eval_limit=16"], monkeypatch, capsys)
        assert_one_line(done, "the disk is full")
        assert not list(mount.glob("run/*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_second_trainer_on_the_same_run_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "lock").write_text(str(holder.pid))
        done = run_main(["train", "-c", CONFIGS / "standard-digits.toml", "--out", out, "-q"], monkeypatch, capsys)
        assert_one_line(done, f"is in use by process {holder.pid}")
        assert not (out / "config.toml").exists()
    finally:
        holder.kill()
        holder.wait()
