"""The README's Python blocks run as written (in a scratch directory holding the configs)."""

from __future__ import annotations

import re

from tests.helpers import CONFIGS, ROOT


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readmes_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    (tmp_path / "configs").symlink_to(CONFIGS)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # in order, one namespace: a later block may use an earlier block's names
        exec(compile(block, "README.md", "exec"), namespace)  # the README's own text is what is tested
    printed = capsys.readouterr().out
    assert "Evaluation(ensemble, n=50" in printed and "torch.Size([50, 3])" in printed
    result, pgd40 = namespace["result"], namespace["pgd40"]
    assert result.attacks[0] == "apgd-ce" and result.gradient_evaluations > 0 and pgd40.attacks == ["pgd"]
    assert result.accuracy == {e: result.correct[:, k].sum().item() / 50 for k, e in enumerate(result.eps)}
