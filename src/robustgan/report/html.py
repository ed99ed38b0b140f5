"""`robustgan report`: one self-contained HTML page (PNG figures embedded as data URIs) with
configs, training curves, robustness curves and tables, checks, saliency and logit trends."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
import time
from pathlib import Path

from robustgan.attacks import AttackSettings, get_norm
from robustgan.eps import format_eps, grid_for
from robustgan.evaluation.checks import check_file
from robustgan.evaluation.context import EvalContext
from robustgan.evaluation.curves import Curve, area, caption, compute_curve, method_label, plot_curves
from robustgan.evaluation.frontier import frontier_points, plot_frontier
from robustgan.evaluation.paired import ALPHA
from robustgan.evaluation.saliency import saliency_grid
from robustgan.evaluation.trends import run_trends
from robustgan.evaluation.verdicts import status_of, summary_line
from robustgan.methods import eps_train, method_class
from robustgan.plotting import pyplot
from robustgan.runs import RunDir
from robustgan.runtime import training_cost
from robustgan.version import __version__

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.pass{color:#107010;font-weight:600}.warn{color:#b00000;font-weight:600}.skipped{color:#666;font-style:italic}
.caption{color:#555;font-size:.85em;margin-top:-.3em}pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}
details{margin:.5em 0}
"""
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def png_data_uri(path_or_fig) -> str:
    if isinstance(path_or_fig, (str, Path)):
        raw = Path(path_or_fig).read_bytes()
    else:
        buffer = io.BytesIO()
        path_or_fig.savefig(buffer, format="png", dpi=100)
        raw = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def training_figure(run: RunDir):
    plt = pyplot()

    records = run.metrics()
    train = [r for r in records if r.get("split") == "train"]
    test = [r for r in records if r.get("split") == "test"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    for key in [k for k in (train[0] if train else {}) if k.startswith(("L_", "loss"))]:
        ax_loss.plot([r["epoch"] for r in train], [r[key] for r in train], label=key)
    for key in [k for k in (train[0] if train else {}) if k.endswith("_acc")]:
        ax_acc.plot([r["epoch"] for r in train], [r[key] for r in train], label=f"train {key}")
    for key in [k for k in (test[0] if test else {}) if k.endswith("_acc")]:
        ax_acc.plot([r["epoch"] for r in test], [r[key] for r in test], "o--", label=f"test {key}")
    ax_loss.set_title("losses", fontsize=9)
    ax_acc.set_title("accuracy", fontsize=9)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    uri = png_data_uri(fig)
    plt.close(fig)
    return uri


def _cell(curve: Curve, i: int) -> str:
    """Worst-case accuracy, with the papers' protocol in parentheses when measured."""
    paper = f" ({100 * curve.protocol[i]:.1f})" if curve.protocol is not None else ""
    return f"{100 * curve.acc[i]:.1f}{paper}"


def curves_tables_html(curves: list[Curve]) -> str:
    methods = list(dict.fromkeys(c.method for c in curves))
    eps_ts = sorted({c.eps_t for c in curves})
    lookup = {(c.method, c.eps_t): c for c in curves}
    head = "<tr><th>eps_i \\ eps_t</th>" + "".join(f"<th>{m}<br>eps_t={format_eps(t)}</th>" for m in methods
                                                   for t in eps_ts if (m, t) in lookup) + "</tr>"
    rows = []
    for i, e in enumerate(curves[0].eps):
        cells = "".join(f"<td>{_cell(lookup[(m, t)], i)}</td>" for m in methods for t in eps_ts if (m, t) in lookup)
        rows.append(f"<tr><td>{format_eps(e)}</td>{cells}</tr>")
    area = "".join(f"<td>{lookup[(m, t)].auc:.3f}</td>" for m in methods for t in eps_ts if (m, t) in lookup)
    return (f"<table>{head}{''.join(rows)}<tr><th>area</th>{area}</tr></table>"
            f'<p class="caption">Accuracy (%) per test eps_i{"; in parentheses the papers&#39; protocol" if curves[0].protocol else ""}; '
            f'{caption(curves)}. Area: mean accuracy over the eps_i range.</p>')


def frontier_html(points, eps: float) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(p.run))}</td><td>{p.method}</td><td>{100 * p.clean:.1f}</td>"
        f"<td>{100 * p.worst:.1f}{'' if p.protocol is None else f' ({100 * p.protocol:.1f})'}</td>"
        f"<td>{p.passes:,.0f}</td><td>{p.seconds:.0f}</td><td>{'yes' if p.on_front else ''}</td></tr>"
        for p in sorted(points, key=lambda p: p.passes))
    return ("<table><tr><th>run</th><th>method</th><th>clean %</th><th>worst case % (PGD-40)</th>"
            f"<th>passes / training image</th><th>training seconds</th><th>on the front</th></tr>{rows}</table>"
            f'<p class="caption">At eps {format_eps(eps)}: forward + backward passes through the networks per '
            "training image over the whole run (counted while training, inner attacks and sub-runs included); "
            "a run is on the Pareto front when no other run is at most as costly and at least as robust.</p>")


def check_html(run: RunDir, norm: str = "linf") -> str:
    path = run.file(check_file(norm))
    if not path.is_file():
        flag = "" if norm == "linf" else f" --norm {norm}"
        return f"<p>No check report: run <code>robustgan check {html.escape(str(run.path))}{flag}</code>.</p>"
    report = json.loads(path.read_text())
    labels = {"pass": "pass", "warn": "WARN", "skipped": "skipped"}
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td class=\"{status_of(c)}\">{labels[status_of(c)]}</td>"
        f"<td style=\"text-align:left\">{html.escape(c['detail'])}</td></tr>"
        for c in report["checks"])
    return (f"<table><tr><th>check</th><th>status</th><th>numbers</th></tr>{rows}</table>"
            f'<p class="caption">{html.escape(summary_line(report["checks"]))}. eps = {format_eps(report["eps"])}'
            f'{"" if norm == "linf" else " (" + get_norm(norm).title + ")"}, '
            f'n = {report["n"]} test images, PGD-{report["steps"]} / PGD-{report["long_steps"]}, '
            f'{report["restarts"]} restarts; paired checks warn at p &lt; {report.get("alpha", ALPHA):g} '
            "(one-sided sign test) and at least their minimum effect.</p>")


def build_report(runs: list[Path], out: Path, settings: AttackSettings = AttackSettings(),
                 ctx: EvalContext = EvalContext(), *, eps_grid=None, steps: int = 20, index: int = 0) -> Path:
    """The HTML page for ``runs``: curves by ``settings``' attack (by default the worst-case
    ensemble) with PGD-40 beside it, saliency maps by PGD-``steps``."""
    runs = [Path(r) for r in runs]
    configs = [RunDir(r).config() for r in runs]
    dataset = configs[0].data.name
    grid = eps_grid or grid_for(dataset, norm=settings.norm)
    curves = [compute_curve(r, grid, settings, ctx) for r in runs]  # the worst-case ensemble, the papers' PGD-40 beside it
    parts = [f"<h1>robustgan report</h1><p>{len(runs)} runs on <b>{dataset}</b>; generated "
             f"{time.strftime('%Y-%m-%d %H:%M')} by robustgan {__version__}.</p>"]
    summary = "".join(
        f"<tr><td>{html.escape(str(r))}</td><td>{method_label(c)}</td><td>{format_eps(eps_train(c))}</td>"
        f"<td>{100 * cv.clean:.1f}</td><td>{cv.auc:.3f}</td><td>{area(cv.eps, cv.protocol) if cv.protocol else float('nan'):.3f}</td>"
        f"<td>{_check_status(RunDir(r), settings.norm)}</td></tr>"
        for r, c, cv in zip(runs, configs, curves))
    parts.append("<h2>Summary</h2><table><tr><th>run</th><th>method</th><th>eps_t</th><th>clean %</th>"
                 "<th>curve area (worst case)</th><th>curve area (PGD-40, papers' protocol)</th>"
                 f"<th>checks</th></tr>{summary}</table>")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plot_curves(curves, tmp / "curves.png", f"{dataset}: robustness curves")
        parts.append("<h2>Robustness curves</h2>" + img(png_data_uri(tmp / "curves.png"), "robustness curves")
                     + f'<p class="caption">{caption(curves)}; one colour per eps_t, one line style per method.</p>'
                     + curves_tables_html(curves))
        if all(training_cost(r) is not None for r in runs) and len(runs) > 1:
            at = grid[len(grid) // 2]
            points = frontier_points(curves, at)
            plot_frontier(points, at, tmp / "frontier.png", f"{dataset}: robustness against training cost", caption(curves))
            parts.append("<h2>Robustness against training cost</h2>" + img(png_data_uri(tmp / "frontier.png"), "frontier")
                         + frontier_html(points, at))
        sal_eps = grid[::max(1, len(grid) // 3)][:3]
        saliency_grid(runs, index, sal_eps, tmp / "saliency.png", steps, ctx.data_root, norm=settings.norm)
        parts.append("<h2>Saliency maps</h2>" + img(png_data_uri(tmp / "saliency.png"), "saliency grid")
                     + f'<p class="caption">Test image {index}: PGD-{steps} adversarial images per eps_i and '
                       "their gradient saliency |d logit_y / dx| (Simonyan et al.).</p>")
        for r, c in zip(runs, configs):
            run = RunDir(r)
            parts.append(f"<h2>Run {html.escape(str(r))}</h2>")
            parts.append("<h3>Training</h3>" + img(training_figure(run), f"training curves of {r}"))
            parts.append("<h3>Gradient-masking checks</h3>" + check_html(run, settings.norm))
            if run.file("model_card.md").is_file():
                card_uri = html.escape(os.path.relpath(run.file("model_card.md").resolve(), Path(out).resolve().parent))
                parts.append(f'<p>Model card: <a href="{card_uri}">model_card.md</a> (and model_card.json).</p>')
            if "trends" in method_class(c.method.name).report_sections:
                png, _, _ = run_trends(r, index=index, out=tmp / f"trends_{len(parts)}", data_root=ctx.data_root)
                parts.append("<h3>Logit trends (paper 002 Fig. 5)</h3>" + img(png_data_uri(png), f"logit trends of {r}"))
            config_text = run.file("config.toml").read_text()
            parts.append(f"<details><summary>config.toml</summary><pre>{html.escape(config_text)}</pre></details>")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>robustgan report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}<script>{CHECK_SCRIPT}</script></body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def _check_status(run: RunDir, norm: str = "linf") -> str:
    path = run.file(check_file(norm))
    if not path.is_file():
        return "not run"
    checks = json.loads(path.read_text())["checks"]
    warned = [c["name"] for c in checks if status_of(c) == "warn"]
    skips = [c["name"] for c in checks if status_of(c) == "skipped"]
    skipped = f' <span class="skipped">({len(skips)} skipped: {html.escape(", ".join(skips))})</span>' if skips else ""
    if warned:
        return f'<span class="warn">WARN: {html.escape(", ".join(warned))}</span>{skipped}'
    return f'<span class="pass">pass</span>{skipped}'
