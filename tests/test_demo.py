import json

from typer.testing import CliRunner

from robustgan.cli import app

METHODS = ("standard", "pgd_at", "atgan", "gan_at")


def test_demo_quick_covers_all_four_methods(tmp_path):
    out = tmp_path / "demo"
    done = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(METHODS)
    assert all({"clean", "0.1", "0.2", "0.3", "area", "checks"} <= set(row) for row in summary.values())
    page = (out / "report.html").read_text()
    for name in METHODS:
        assert f"{out / name}" in page and name in done.output
    assert "Logit trends" in page and "report.html" in done.output
