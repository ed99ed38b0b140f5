"""What every command shares: the version, and option errors as one line."""

from __future__ import annotations

from robustgan.version import __version__
from tests.helpers import assert_one_line, run_main


def test_version_is_one_line(monkeypatch, capsys):
    done = run_main(["--version"], monkeypatch, capsys)
    assert done.returncode == 0 and done.stdout == f"robustgan {__version__}\n" and not done.stderr


def test_a_negative_query_budget_is_one_line(tmp_path, monkeypatch, capsys):
    for command in ("eval", "curve", "check"):
        done = run_main([command, tmp_path, "--queries", "-1"], monkeypatch, capsys)
        assert_one_line(done, "--queries must be >= 0")


def test_each_range_error_names_its_option_and_value(tmp_path, monkeypatch, capsys):
    cases = {("eval", "--limit", "-5"): "--limit must be >= 0, got -5",
             ("eval", "--batch-size", "0"): "--batch-size must be positive, got 0",
             ("eval", "--restarts", "0"): "--restarts must be positive, got 0",
             ("check", "--long-steps", "0"): "--long-steps must be positive, got 0",
             ("eval", "--eps", "0.1,,0.2"): "--eps: an empty value",
             ("eval", "--eps", "0.1,0.1"): "--eps: a value given twice"}
    for (command, *option), message in cases.items():
        assert_one_line(run_main([command, tmp_path, *option], monkeypatch, capsys), message)


def test_an_index_outside_the_test_set_is_one_line(digits_runs, tmp_path, monkeypatch, capsys):
    for index in ("9999", "-1"):
        done = run_main(["saliency", digits_runs / "standard", "--index", index, "--out", tmp_path / "s.png"],
                        monkeypatch, capsys)
        assert_one_line(done, f"--index must be in [0, 358], got {index}")
        assert not (tmp_path / "s.png").exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """/proc takes no new files, a file is not a folder, a folder not a file: one line, exit 2,
    before a run is even read (the runs named here do not exist), and nothing created."""
    (tmp_path / "afile").write_text("")
    run, config = tmp_path / "no-run", "configs/standard-digits.toml"
    cases = [["report", run, "--out", "/proc/nope/report.html"], ["frontier", run, "--out", "/proc/nope/f.png"],
             ["curve", run, "--out", "/proc/nope"], ["saliency", run, "--out", "/proc/nope/s.png"],
             ["trends", run, "--out", "/proc/nope"], ["train", "-c", config, "--out", "/proc/nope/run"],
             ["sweep", "-c", config, "--out", "/proc/nope"], ["demo", "--out", "/proc/nope"],
             ["curve", run, "--out", tmp_path / "afile"], ["report", run, "--out", tmp_path]]
    before = sorted(tmp_path.rglob("*"))
    for args in cases:
        done = run_main(args, monkeypatch, capsys)
        assert_one_line(done, "--out")
        assert "cannot write there" in done.stderr or "a directory" in done.stderr, (args, done.stderr)
    assert sorted(tmp_path.rglob("*")) == before


def test_usage_errors_are_one_line(monkeypatch, capsys):
    cases = {("eval", "--nope"): "No such option: --nope", ("frontier",): "Missing argument 'RUN...'",
             ("eval", "x", "--limit", "abc"): "Invalid value for '--limit'", ("nosuchcommand",): "No such command"}
    for args, message in cases.items():
        assert_one_line(run_main(list(args), monkeypatch, capsys), message)
    assert run_main(["eval", "--help"], monkeypatch, capsys).returncode == 0


def test_seed_and_json_are_on_every_evaluating_command(monkeypatch, capsys):
    """One name per idea: --seed on every command that attacks, --json on those that print
    results, --device on every command that runs a model, --eps for test eps everywhere
    (saliency's --eps-i stays as a hidden old name)."""
    for command in ("eval", "curve", "check", "card", "report", "frontier"):
        assert "--seed N" in run_main([command, "--help"], monkeypatch, capsys).stdout, command
    for command in ("eval", "curve", "check", "frontier"):
        assert "--json" in run_main([command, "--help"], monkeypatch, capsys).stdout, command
    saliency = run_main(["saliency", "--help"], monkeypatch, capsys).stdout
    assert "--eps EPS" in saliency and "--eps-i" not in saliency
    for command in ("eval", "curve", "check", "card", "report", "frontier", "saliency", "trends", "predict"):
        assert "--device DEVICE" in run_main([command, "--help"], monkeypatch, capsys).stdout, command


def test_a_failed_start_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """A --model that does not import, and a training whose data is missing: one line, exit 2,
    and no results folder or half-made run directory left."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    done = run_main(["eval", "--model", "nosuchmodule:build", "--weights", tmp_path / "w.safetensors",
                     "--dataset", "digits", "--eps", "0.1"], monkeypatch, capsys)
    assert_one_line(done, "cannot import nosuchmodule")
    done = run_main(["train", "-c", "configs/pgd-at-mnist.toml", "--out", tmp_path / "run",
                     "--data-root", tmp_path / "no-mnist-here"], monkeypatch, capsys)
    assert done.returncode == 2 and "mnist" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
