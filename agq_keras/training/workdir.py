"""A run's workdir: it remembers the config its run was started with, and one live run holds it.

:func:`check` (read-only, before anything is built or written) refuses a workdir that belongs to a run of
another config, or that a live run holds; :func:`claim` (just before training) creates the folder, takes its
lock and writes ``run_config.json`` when the workdir has none. A run killed by any signal leaves no stuck
lock: the lock is an ``fcntl.flock`` on ``workdir/.lock``, which the operating system drops with the process
(a platform without ``fcntl`` runs unlocked).

The config a workdir belongs to is its ``run_config.json``, else the ``config`` of a finished run's
``metrics.json`` (workdirs written before this file existed). Every key counts except :data:`SAME_RUN_KEYS`
(how the run is shown or where its data lies), so resuming with another model, data or method is refused, in
one line naming the keys that differ.
"""

from __future__ import annotations

import json
import os

from agq_keras.saving import write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

CONFIG_FILE = "run_config.json"
LOCK_FILE = ".lock"
SAME_RUN_KEYS = frozenset({"verbose", "data_dir", "tpu"})  # may change between the calls of one run

_held: dict = {}  # workdir (absolute) -> the open lock file of this process


def _plain(config) -> dict:
    """A config (ConfigDict or dict) as JSON values, so a saved config and a given one compare equal."""
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(config, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def saved_config(workdir: str) -> dict | None:
    """The config the workdir's run was started with (:data:`CONFIG_FILE`, else a finished run's
    ``metrics.json``), or None when it has neither."""
    for name, key in ((CONFIG_FILE, None), ("metrics.json", "config")):
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            with open(path) as fh:
                data = json.load(fh)
            return data if key is None else data.get(key)
    return None


def differences(saved: dict, given) -> list[tuple[str, object, object]]:
    """``(key, saved value, given value)`` for every key that differs, :data:`SAME_RUN_KEYS` aside."""
    given = _plain(given)
    return [(k, saved.get(k), given.get(k)) for k in sorted(set(saved) | set(given))
            if k not in SAME_RUN_KEYS and saved.get(k) != given.get(k)]


def check(workdir: str, config) -> None:
    """Refuse (``ValueError``, one line) a workdir holding a run of another config, or held by a live run.
    Writes nothing."""
    saved = saved_config(workdir) if os.path.isdir(workdir) else None
    if saved is not None:
        diff = differences(saved, config)
        if diff:
            shown = "; ".join(f"config.{k}: {_show(old)} there, {_show(new)} now" for k, old, new in diff[:4])
            more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
            raise ValueError(f"workdir {workdir!r} belongs to a run of another config ({shown}{more}): rerun with "
                             "its config to resume or repeat it, or give a new --workdir (or delete that folder) to "
                             "start afresh.")
    if os.path.isdir(workdir):
        _lock(workdir)


def claim(workdir: str, config) -> None:
    """Create the workdir, take its lock (held until the process ends or :func:`release`) and record the
    config when the workdir has none. Call :func:`check` first."""
    os.makedirs(workdir, exist_ok=True)
    _lock(workdir)
    if saved_config(workdir) is None:
        write_text(os.path.join(workdir, CONFIG_FILE), json.dumps(_plain(config), indent=2))


def release(workdir: str) -> None:
    """Drop this process's lock on the workdir (a no-op when it holds none)."""
    handle = _held.pop(os.path.abspath(workdir), None)
    if handle is not None:
        handle.close()


def _lock(workdir: str) -> None:
    key = os.path.abspath(workdir)
    if fcntl is None or key in _held:
        return
    handle = open(os.path.join(workdir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise ValueError(f"workdir {workdir!r} is in use by another run{f' (pid {owner})' if owner else ''}: wait for "
                         "it to finish, or give another --workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held[key] = handle


def _show(value) -> str:
    return "unset" if value is None else repr(tuple(value) if isinstance(value, list) else value)
