"""The experiment configs (ml_collections), installed with the package.

Every module here but :mod:`~agq_keras.configs.base` (the schema and the recipes) has a ``get_config()``,
some ``get_config(variant)``. ``scripts/train.py --config=VALUE`` takes ``FILE[:VARIANT]``: FILE is a
path (``configs/fmnist.py:resnet20_plain_ag``, or a config file of your own), or the bare name
of one of these files (``default.py``, ``fmnist.py:resnet20_plain_ag``), looked up here when no such file
exists in the current directory, so an installed package runs its configs from any folder.
:func:`resolve` does the lookup (a folder is an error that lists its config files).
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_CONFIGS = ("__init__.py", "base.py")


def names() -> tuple[str, ...]:
    """The config files of the package: ``default.py``, ``fmnist.py``, ``paper.py``, ..."""
    return tuple(sorted(f for f in os.listdir(HERE) if f.endswith(".py") and f not in NOT_CONFIGS))


def resolve(value: str) -> str:
    """A ``--config`` value ``FILE[:VARIANT]`` -> the same value with FILE a path to an existing file.

    FILE as given when it exists (relative to the current directory, or absolute); else, when FILE is a
    bare file name (no folder; ``.py`` may be left off), this package's file of that name. Otherwise a
    ``FileNotFoundError`` naming the value and where it looked."""
    file, sep, variant = value.partition(":")
    if os.path.isfile(file):
        return value
    if os.path.isdir(file):
        inside = sorted(f for f in os.listdir(file) if f.endswith(".py") and f not in NOT_CONFIGS)
        raise IsADirectoryError(f"config {file!r} (--config={value}) is a folder; give a config file"
                                + (f" in it: {', '.join(inside)}." if inside else " (it holds none)."))
    bare = bool(file) and os.path.basename(file) == file
    name = file if file.endswith(".py") else f"{file}.py"
    if bare and name in names():
        return os.path.join(HERE, name) + sep + variant
    known = f"the package's configs ({HERE}: {', '.join(names())})"
    where = (f"looked in the current directory ({os.getcwd()}) and among {known}" if bare else
             f"looked at {os.path.abspath(file)}; a bare file name is looked up among {known}")
    raise FileNotFoundError(f"config file {file!r} (--config={value}) not found: {where}.")
