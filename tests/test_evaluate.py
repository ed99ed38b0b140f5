import json
import shutil
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import robustgan
from robustgan.cli import app
from robustgan.config import load_config
from robustgan.evaluation.curves import area
from robustgan.evaluation.saliency import saliency
from robustgan.runs import RunDir
from robustgan.sweep import run_sweep
from tests.helpers import CONFIGS, copy_run, run_main
from tests.planted import RoundInputs

runner = CliRunner()


def test_check_command_exits_1_on_masked_model_and_0_on_honest(digits_runs, tmp_path, monkeypatch):
    args = ["--restarts", "2", "--no-autoattack", "--targets", "1", "--eps", "0.2", "--queries", "100"]
    run = copy_run(digits_runs / "pgd", tmp_path / "pgd")
    # the honest run on 32 images: its false-alarm rate is bounded at any n (the paired rule;
    # test_identical_attacks_never_warn_over_seeds, docs/evaluation.md)
    honest = runner.invoke(app, ["check", str(run), "--limit", "32", "--steps", "20", "--long-steps", "40",
                                 "--ensemble-steps", "20", "--surrogate", str(digits_runs / "standard"), *args])
    assert honest.exit_code == 0, honest.output
    assert "possible gradient masking" not in honest.output
    report = json.loads((run / "check.json").read_text())  # the printed summary, without rich's line breaks
    assert "passed, 2 skipped (graybox: the method has no gray-box part; autoattack: --no-autoattack)" in report["summary"]
    assert report["status"] == "pass" and {c["name"] for c in report["checks"]} >= {"unbounded", "transfer", "long_pgd"}
    assert {c["status"] for c in report["checks"]} == {"pass", "skipped"}

    real_load = robustgan.runtime.load_model
    monkeypatch.setattr(robustgan.runtime, "load_model", lambda run: RoundInputs(real_load(run)).eval())
    # quantised inputs: zero gradients and unbounded PGD failing warn at any n and any step count.
    # Another n: none of the honest model's cached attacks is reused (same weights, same cache)
    masked = runner.invoke(app, ["check", str(run), "--limit", "16", "--steps", "5", "--long-steps", "10",
                                 "--ensemble-steps", "5", *args])
    assert masked.exit_code == 1 and "WARN" in masked.output and "possible gradient masking" in masked.output


def test_skipped_checks_are_skipped_not_passed(digits_runs, tmp_path, monkeypatch, capsys):
    """No surrogate and no AutoAttack: both say skipped (CLI, check.json), and the exit is 0.
    With --json, check.json is printed on stdout and the lines go to stderr."""
    run = tmp_path / "pgd"
    copy_run(digits_runs / "pgd", run)
    done = run_main(["check", run, "--limit", "32", "--steps", "5", "--long-steps", "10", "--targets", "1",
                     "--restarts", "2", "--no-autoattack", "--ensemble-steps", "10", "--eps", "0.2", "--json"],
                    monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    assert "skipped  transfer" in done.stderr and "skipped  autoattack" in done.stderr
    assert "3 skipped (transfer: no surrogate" in done.stderr
    assert "; graybox: the method has no gray-box part; autoattack: --no-autoattack)" in done.stderr
    report = json.loads((run / "check.json").read_text())
    assert json.loads(done.stdout) == report
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["transfer"] == status["autoattack"] == "skipped" and report["status"] == "pass"
    assert "3 skipped" in report["summary"] and report["ensemble_steps"] == 10


def test_area_is_exact():
    assert area([0.1, 0.2, 0.5], [0.7, 0.7, 0.7]) == pytest.approx(0.7, abs=1e-15)
    assert area([0.0, 1.0], [1.0, 0.0]) == pytest.approx(0.5)
    assert area([0.3], [0.25]) == 0.25


def test_curve_csv_equals_eval(digits_runs, tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"  # separate copies: separate caches, independent computations
    for copy in (a, b):
        copy_run(digits_runs / "pgd", copy)
    same = ["--eps", "0.1,0.2", "--steps", "10", "--limit", "40", "--targets", "1", "--queries", "50", "--no-protocol"]
    done = runner.invoke(app, ["curve", str(a), *same, "--out", str(tmp_path / "curves")])
    assert done.exit_code == 0, done.output
    lines = (tmp_path / "curves" / "curves.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    curve = {float(r[3]): float(r[4]) for r in rows}
    assert "n = 40)" in (tmp_path / "curves" / "tables.md").read_text()
    assert (tmp_path / "curves" / "curves.png").stat().st_size > 10_000
    done = run_main(["eval", b, *same, "--json"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert curve[0.0] == result["clean"]
    assert [curve[0.1], curve[0.2]] == [r["accuracy"] for r in result["results"]]
    # curve --json: the same numbers on stdout (from the cache: nothing is attacked again)
    done = run_main(["curve", a, *same, "--out", tmp_path / "curves", "--json"], monkeypatch, capsys)
    (row,) = json.loads(done.stdout)
    assert row["clean"] == result["clean"] and row["results"] == result["results"]


def test_saliency_shape_and_zero_where_ignored():
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 10:20, 5:15] = 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

    class Masked(nn.Module):
        def forward(self, x):
            return model(x * mask)

    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    sal = saliency(Masked(), x, y)
    assert sal.shape == (3, 1, 28, 28)
    assert (sal[:, :, mask[0, 0] == 0] == 0).all() and (sal[:, :, mask[0, 0] == 1] > 0).any()


def test_saliency_command(digits_runs, tmp_path):
    out = tmp_path / "sal.png"
    done = runner.invoke(app, ["saliency", str(digits_runs / "standard"), str(digits_runs / "pgd"), "--index", "2",
                               "--eps-i", "0.1,0.3", "--steps", "5", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_sweep_skips_finished_and_resumes_interrupted(tmp_path):
    cfg = load_config(CONFIGS / "pgd-at-digits.toml", ["train.epochs=2", "data.train_limit=64", "train.eval_limit=32",
                                                       "method.steps=2"])
    logs = []
    runs = run_sweep(cfg, tmp_path, [0.1, 0.2], ["pgd_at"], quiet=True, log=logs.append)
    assert [r.name for r in runs] == ["pgd_at-eps0.1", "pgd_at-eps0.2"]
    assert RunDir(runs[1]).config().method.eps == 0.2
    (runs[0] / "DONE").unlink()  # as if killed after its last checkpoint
    logs.clear()
    run_sweep(cfg, tmp_path, [0.1, 0.2], ["pgd_at"], quiet=True, log=logs.append)
    assert logs == ["pgd_at-eps0.1: resuming", "pgd_at-eps0.2: done, skipped"]
    assert RunDir(runs[0]).is_complete


def test_sweep_switches_methods_keeping_shared_keys():
    from robustgan.sweep import plan

    cfg = load_config(CONFIGS / "atgan-digits.toml")
    names = [name for name, _ in plan(cfg, [0.1], ["pgd_at", "atgan"], [None, 0.5])]
    assert names == ["pgd_at-eps0.1", "pgd_at-frac-eps0.1", "atgan-eps0.1", "atgan-frac-eps0.1"]
    pgd_cfg = plan(cfg, [0.1], ["pgd_at"], [None])[0][1]
    assert pgd_cfg.method.steps == cfg.method.steps and pgd_cfg.model.name == cfg.model.name


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def assert_renders_in_chromium(page: Path, tmp_path: Path) -> None:
    """Headless chromium loads ``page`` with every image and no script error, and paints it.
    Called on the demo's report (tests/test_demo.py), the page with every kind of section."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]
    shot = tmp_path / "shot.png"
    dom = subprocess.run([browser, *flags, "--dump-dom", f"--screenshot={shot}", "--window-size=1200,3000",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    images = page.read_text().count("<img ")
    assert f'data-images="{images}/{images}"' in dom.stdout, "an image failed to load"
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not console_errors, console_errors
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_report_command_writes_one_self_contained_page(digits_runs, tmp_path):
    out = tmp_path / "report.html"
    runs = [str(copy_run(digits_runs / name, tmp_path / name)) for name in ("standard", "pgd")]  # it writes caches
    done = runner.invoke(app, ["report", *runs, "--out", str(out),
                               "--eps", "0.1,0.3", "--steps", "2", "--limit", "16", "--targets", "0",
                               "--ensemble-steps", "5", "--queries", "50"])
    assert done.exit_code == 0, done.output
    page = out.read_text()
    # curves + frontier + saliency + one training figure per run
    assert page.count("<img ") == 5 and "src=\"http" not in page and "Robustness curves" in page
    assert "n = 16 test images" in page and "Robustness against training cost" in page
    assert "worst case of APGD-CE + Square (50 queries), 5 steps" in page  # the caption names the ensemble's budget


def test_auto_surrogate_is_an_independent_clean_run(digits_runs, tmp_path):
    from robustgan.evaluation.checks import CheckSettings, check_run
    from robustgan.evaluation.context import EvalContext

    run = tmp_path / "pgd"
    copy_run(digits_runs / "pgd", run)
    settings = CheckSettings(eps=0.2, steps=3, long_steps=5, restarts=2, targets=1, ensemble_steps=3, autoattack=False,
                             queries=30)
    results = check_run(run, settings, EvalContext(limit=32), surrogate="auto", surrogate_epochs=1)
    transfer = next(r for r in results if r.name == "transfer")
    assert transfer.status != "skipped" and 0 <= transfer.values["alt"] <= 1  # alt: accuracy under the transfer
    surrogate = RunDir(run / "surrogate")
    assert surrogate.is_complete
    cfg, parent = surrogate.config(), RunDir(run).config()
    assert cfg.method.name == "standard" and cfg.train.epochs == 1
    assert cfg.train.seed != parent.train.seed and cfg.model.name == parent.model.name


def test_sweep_on_devices_trains_one_run_per_device_and_prints_commands(tmp_path, monkeypatch, capsys):
    """--devices cpu,cpu: two training processes at once; the same weights as training each
    run alone (the printed command); --print-commands lists only unfinished runs."""
    base = ["-c", str(CONFIGS / "pgd-at-digits.toml"), "--set", "train.epochs=1", "--set", "data.train_limit=64",
            "--set", "train.eval_limit=16", "--set", "method.steps=2", "--methods", "pgd_at", "--eps-t", "0.1,0.2",
            "--out", str(tmp_path / "sweep")]
    done = run_main(["sweep", *base, "--print-commands"], monkeypatch, capsys)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 2 and all(line.startswith("robustgan train -c ") for line in lines)
    done = run_main(["sweep", *base, "--devices", "cpu,cpu"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    runs = [tmp_path / "sweep" / name for name in ("pgd_at-eps0.1", "pgd_at-eps0.2")]
    assert all(RunDir(r).is_complete for r in runs)
    alone = tmp_path / "alone"
    command = shlex.split(lines[1])
    command[command.index("--out") + 1] = str(alone)  # the printed command, into another directory
    assert run_main(command[1:], monkeypatch, capsys).returncode == 0  # same thread count: helpers.configure_torch
    from safetensors.torch import load_file
    a, b = load_file(runs[1] / "model.safetensors"), load_file(alone / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    (runs[0] / "DONE").unlink()  # interrupted: resumed, the finished one skipped
    done = run_main(["sweep", *base, "--print-commands"], monkeypatch, capsys)
    assert done.stdout.strip() == f"robustgan train --out {runs[0]} --resume --quiet"
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["pgd_at-eps0.1", "pgd_at-eps0.2"]  # runs only
    assert (runs[1] / "train.log").is_file()


def test_sweep_devices_map_through_the_visible_gpus():
    from robustgan.sweep import device_env

    assert device_env("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,3"})["CUDA_VISIBLE_DEVICES"] == "3"
    assert device_env("cuda:1", {})["CUDA_VISIBLE_DEVICES"] == "1"
    assert device_env("cpu", {"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(robustgan.errors.RobustganError, match="shows 2 GPU"):
        device_env("cuda:2", {"CUDA_VISIBLE_DEVICES": "2,3"})
    with pytest.raises(robustgan.errors.RobustganError, match="is not cpu, cuda or cuda:N"):
        device_env("tpu:0", {})
