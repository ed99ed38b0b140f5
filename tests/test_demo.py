import json

from typer.testing import CliRunner

from robustgan.cli import app
from tests.test_evaluate import assert_renders_in_chromium

METHODS = ("standard", "pgd_at", "atgan", "gan_at", "fgsm_rs", "trades")


def test_demo_quick_covers_every_method_and_the_frontier(tmp_path):
    out = tmp_path / "demo"
    done = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(METHODS)
    assert all({"clean", "0.1", "0.2", "0.3", "area", "checks"} <= set(row) for row in summary.values())
    # with a surrogate for every run: only AutoAttack (off in the demo) and, where the method has no
    # gray-box part (all but ATGAN), graybox are skipped, and say so
    for name, row in summary.items():
        skipped = "1 skipped (" if name == "atgan" else "2 skipped (graybox: the method has no gray-box part; "
        assert skipped + "autoattack: --no-autoattack)" in row["checks"], (name, row)
    page = (out / "report.html").read_text()
    assert '<td class="skipped">skipped</td>' in page
    for name in METHODS:
        assert f"{out / name}" in page and name in done.output
    assert "Logit trends" in page and "report.html" in done.output.replace("\n", "")  # rich wraps long paths
    # the frontier: printed, plotted, in the report; each run's counted cost in summary.json
    assert "what robustness costs" in done.output and (out / "frontier.png").stat().st_size > 10_000
    assert "Robustness against training cost" in page
    assert summary["trades"]["training_cost"]["passes_per_image"] > summary["fgsm_rs"]["training_cost"]["passes_per_image"]
    assert_renders_in_chromium(out / "report.html", tmp_path)


def test_predict_returns_the_models_own_prediction(digits_runs, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    import robustgan
    from robustgan.evaluation.predict import load_image

    x, _ = robustgan.data.load("digits", split="test")
    model = robustgan.load(digits_runs / "pgd")
    paths = []
    for i in range(5):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(x[i, 0].numpy()).save(path)
        paths.append(path)
    rgb = tmp_path / "big_rgb.png"  # colour and 56x56: converted and resized
    Image.fromarray(np.repeat(np.kron(x[0, 0].numpy(), np.ones((2, 2), np.uint8))[..., None], 3, axis=2)).save(rgb)
    done = CliRunner().invoke(app, ["predict", str(digits_runs / "pgd"), *map(str, paths), str(rgb)])
    assert done.exit_code == 0, done.output
    lines = [line.split("\t") for line in done.output.strip().splitlines()]
    with torch.no_grad():
        expected = model(x[:5].float() / 255).argmax(1).tolist()
        big = model(load_image(rgb, 1, 28)).argmax(1).item()
    assert [int(line[1]) for line in lines] == expected + [big]
    assert all(0 < float(line[2]) <= 1 for line in lines)


def test_predict_bad_image_is_one_line(digits_runs, tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line, run_main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert_one_line(run_main(["predict", digits_runs / "pgd", bad], monkeypatch, capsys), "bad.png: not a readable image")
