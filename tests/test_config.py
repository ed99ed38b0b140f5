import math
from pathlib import Path

import pytest

from robustgan.config import ScheduleConfig, load_config, to_toml, from_dict, read_toml
from robustgan.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "c.toml"
    again.write_text(to_toml(cfg))
    assert from_dict(read_toml(again)) == cfg


@pytest.mark.parametrize("override,message", [
    ("method.eps=-0.1", "method.eps must be in"),
    ("method.eps=1.5", "method.eps must be in"),
    ("method.frac=1.2", "method.frac must be in"),
    ("method.steps=0", "method.steps must be positive"),
    ("train.epochs=0", "train.epochs must be positive"),
    ("train.batch_size=-3", "train.batch_size must be positive"),
    ("method.epz=0.1", "unknown config key method.epz"),
    ("trian.epochs=3", r"unknown config section \[trian\]"),
    ("method.name=\"magic\"", "unknown method 'magic'"),
    ("model.name=\"atgan_g_mnist\"", "not a classifier"),
    ("train.epochs=\"many\"", "train.epochs: invalid value"),
    ("optim.name=\"rmsprop\"", "optim.name must be"),
    ("data.name=\"imagenet\"", "unknown dataset"),
    ("schedule.name=\"linear\"", "schedule.name must be"),
])
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Path(__file__).parent.parent / "configs" / "pgd-at-digits.toml", [override])


def test_overrides_and_fractions():
    cfg = load_config(None, ['method.name="pgd_at"', 'method.eps="8/255"', "optim.betas=[0.5, 0.9]",
                             "schedule.milestones=[2,4]"])
    assert math.isclose(cfg.method.eps, 8 / 255) and cfg.optim.betas == (0.5, 0.9)
    assert cfg.schedule.milestones == (2, 4)


def test_schedules():
    multistep = ScheduleConfig("multistep", (2, 4), 0.1)
    assert [multistep.factor(e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = ScheduleConfig("cosine")
    assert cosine.factor(0, 10) == 1 and cosine.factor(5, 10) == pytest.approx(0.5)
    assert ScheduleConfig().factor(7, 10) == 1
