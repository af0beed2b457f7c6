"""Peak memory of a training step, each variant measured in a fresh process.

Peak resident set size (``VmHWM`` of /proc/self/status; ``ru_maxrss`` is
inherited from the forking parent on Linux, so it is not used) of a child process that builds the
model and runs a few training steps, minus the peak of a child that only
imports TensorFlow and builds nothing (the baseline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import os, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, agq_keras
from benchmarks import train_step
variant, arch, batch = {variant!r}, {arch!r}, {batch}
if variant:
    model = train_step.compiled(arch, variant)
    train_step.images_per_second(model, batch, warmup=1, steps=3)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps(int(hwm.split()[1]) * 1024))
"""


def peak_rss_bytes(variant: str, arch: str = "resnet20", batch_size: int = 128) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _CHILD.format(variant=variant, arch=arch, batch=batch_size)
    # agq_keras: the installed package; benchmarks: the repository root, the child's folder (python -c)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root).stdout
    return int(json.loads(out.strip().splitlines()[-1]))
