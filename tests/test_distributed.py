"""Two CPU processes (gloo) under torchrun: data-parallel training, where the ranks agree with
each other and with one process training on the whole batch; and sharded evaluation, which
gives one process's numbers. One launch runs both (each launch starts three interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustgan.config import load_config
from robustgan.train import fit
from tests.conftest import CONFIGS, copy_run, run_main

WORKER = Path(__file__).parent / "ddp_worker.py"
# PGD-2 AT (deterministic start) of the C&W CNN without dropout (no BatchNorm either): a global
# batch of 64 split 32 + 32 must give the single-process update. SGD, because Adam turns
# float-rounding differences in near-zero gradients into lr-sized steps.
OVERRIDES = ["model.dropout=0", "optim.name=sgd", "optim.lr=0.05", "data.train_limit=256", "train.batch_size=64", "train.steps=6",
             "method.steps=2", "method.random_start=false", "train.eval_limit=16", "train.eval_eps=0",
             "train.device=cpu"]


# sharded evaluation of a copy of the PGD-AT preset (test size): robust accuracies well above 0
EVAL = ["--eps", "0.1,0.2", "--steps", "5", "--limit", "30", "--json", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, digits_runs):
    """One torchrun launch: the ranks train (OVERRIDES) into <out>/run, then run `eval` on a copy
    of the PGD-AT preset; returns <out>, that copy and what the ranks printed."""
    out = tmp_path_factory.mktemp("ddp")
    run = copy_run(digits_runs / "pgd", out / "evaluated")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(CONFIGS / "pgd-at-digits.toml"), str(out), *OVERRIDES,
                           "--", "eval", str(run), *EVAL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, run, done.stdout


def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(two_ranks, tmp_path):
    out = two_ranks[0]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks drifted apart"

    fit(load_config(CONFIGS / "pgd-at-digits.toml", OVERRIDES), tmp_path / "single", quiet=True)
    single = load_file(str(tmp_path / "single" / "model.safetensors"))
    saved = load_file(str(out / "run" / "model.safetensors"))  # written by rank 0 only
    assert single.keys() == saved.keys()
    for k in single:
        # float rounding differs between a batch of 64 and two of 32 and grows over 6 steps (measured up
        # to 1.9e-5 here); a wrong reduction (a sum, one shard) is off by a whole update, ~1e-3
        assert torch.allclose(single[k], saved[k], atol=1e-4, rtol=1e-4), (k, (single[k] - saved[k]).abs().max())
        assert torch.equal(saved[k], rank0[f"model.{k}"])
    assert (out / "run" / "DONE").is_file() and not (out / "run" / "lock").exists()


def test_sharded_eval_under_torchrun_matches_one_process(two_ranks, monkeypatch, capsys):
    _, run, printed = two_ranks
    sharded = json.loads(printed.strip().splitlines()[-1])
    (run / "eval_cache.json").unlink()
    single = json.loads(run_main(["eval", run, *EVAL], monkeypatch, capsys).stdout)
    assert sharded["results"] == single["results"] and sharded["clean"] == single["clean"]
    assert 0 < single["results"][-1]["accuracy"] < single["clean"]  # something to disagree about
