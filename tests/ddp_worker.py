"""Run under torchrun by test_distributed.py: train a config with robustgan.train.fit, then
every rank saves its own copy of the networks to OUT/rank<R>.safetensors; then, given
``-- ARGS``, every rank runs the CLI with ARGS (one launch for both: each costs the ranks'
interpreter start-up).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CONFIG OUT KEY=VALUE... [-- ARGS...]
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

import robustgan.train as train
from robustgan.config import load_config
from robustgan.distributed import world

config, out, rest = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
overrides, cli_args = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
built = []
real_method_class = train.method_class


def capturing(name):
    """The method class, recording each instance the loop builds."""

    class Captured(real_method_class(name)):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            built.append(self)

    return Captured


train.method_class = capturing
train.fit(load_config(config, overrides), out / "run", quiet=True)
state = {f"{net}.{k}": v.detach().contiguous() for net, m in built[0].networks().items()
         for k, v in m.state_dict().items()}
save_file(state, str(out / f"rank{world().rank}.safetensors"))
if cli_args:
    from robustgan.cli import main

    sys.argv = ["robustgan", *cli_args]
    main()
