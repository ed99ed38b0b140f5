"""Run under torchrun by test_distributed.py: train a config with robustgan.train.fit, then
every rank saves its own copy of the networks to OUT/rank<R>.safetensors.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CONFIG OUT KEY=VALUE...
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

import robustgan.train as train
from robustgan.config import load_config
from robustgan.distributed import leave, world
from robustgan.runtime import apply_mkldnn_switch

apply_mkldnn_switch()  # the float path of the test that started it (ROBUSTGAN_MKLDNN)

config, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
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
leave(0)  # as the CLI's ranks end (robustgan.distributed.leave)
