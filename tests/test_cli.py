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
