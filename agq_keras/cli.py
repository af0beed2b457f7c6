"""What the command-line scripts share: flag parsing and errors as one line, never a traceback.

``scripts/*.py`` define their absl flags and a ``main(argv)``, then call :func:`run`. A bad flag (an unknown
``--config.KEY``, a ``--config`` that names no file, a bad value) prints ``error: ...`` and exits 2; a user error
raised by ``main`` (``ValueError``, ``FileNotFoundError``, other ``OSError``, or a type in ``user_errors``) prints
``error: ...`` and exits 1; Ctrl-C exits 130 and SIGTERM 143, after the ``finally`` blocks of the atomic writers
have removed their temporary files, so no half-written file is left. With ``config_flag="config"``
(``scripts/train.py``), the library's ``config.KEY`` in an error line is written ``--config.KEY``, the flag as the
user typed it; the exception's notes (``add_note``: a training run says what its workdir keeps) are printed first.
A signal raises its exception wherever the main thread is; when that is inside TensorFlow (a function being
traced), TensorFlow may re-raise it as another type, so the exit code comes from the signal that was received, not
from the type of the exception that reaches :func:`run`.
:func:`define_config_flag` is the ``--config`` flag of ``scripts/train.py``.
"""

from __future__ import annotations

import re
import signal
import sys

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM, so cleanup code runs before the process exits."""


_received: list = []  # the signals received since run() installed its handlers, in order


def _on_sigterm(signum, frame):
    _received.append(signal.SIGTERM)
    raise Terminated(SIGTERM_EXIT)


def _on_sigint(signum, frame):
    _received.append(signal.SIGINT)
    raise KeyboardInterrupt


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def as_flags(message: str, config_flag: str, keys) -> str:
    """``message`` with each ``config.KEY`` (``KEY`` in ``keys``; not ``--config.KEY``, not a file's name)
    named as its flag ``--<config_flag>.KEY``."""
    if not keys:
        return message
    alternatives = "|".join(sorted(map(re.escape, keys), key=len, reverse=True))
    return re.sub(rf"(?<![\w.\-/])config\.(?=(?:{alternatives})\b(?!\.\w))", f"--{config_flag}.", message)


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        message = str(err)
    except (AttributeError, KeyError) as err:  # ml_collections: --config.KEY for a KEY the config lacks
        key = str(err).strip("'\"")
        given = [a for a in argv[1:] if a.startswith(f"--config.{key}")]
        message = (f"unknown config key {key!r} ({given[0]}); allowed: the keys of configs/base.py." if given
                   else _one_line(err))
    except Exception as err:  # noqa: BLE001 - e.g. a config file that fails to load, a value of the wrong type
        message = _one_line(err)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config_flag(name: str = "config", help_string: str = "A config file path, or the bare name of one of "
                       "the package's (configs/, installed as agq_keras.configs: default.py, fmnist.py:VARIANT, "
                       "...); FILE[:VARIANT].",
                       flag_values=None):
    """``ml_collections.config_flags.DEFINE_config_file`` (locked config, ``--NAME.KEY=VALUE`` overrides)
    whose value may also name a config of the package (:func:`agq_keras.configs.resolve`); a value naming
    no file fails while the flags are parsed, in one line that says where it looked. ``flag_values``: absl's
    ``FLAGS`` unless given."""
    from absl import flags
    from ml_collections import config_flags

    from agq_keras import configs

    class Resolving(flags.ArgumentParser):  # the config file parser, given the resolved path
        def __init__(self, file_parser):
            self.file_parser = file_parser

        def parse(self, argument):
            try:
                return self.file_parser.parse(configs.resolve(argument))
            except TypeError as err:
                file, _, variant = argument.partition(":")
                if variant and "positional argument" in str(err):  # get_config() takes no variant
                    raise ValueError(f"config file {file!r} has no variants (--config={argument}); give "
                                     f"--config={file} alone.") from None
                raise ValueError((str(err).strip().splitlines() or [repr(err)])[-1]) from None
            except ValueError as err:  # ml_collections puts get_config's traceback in the text:
                raise ValueError((str(err).strip().splitlines() or [repr(err)])[-1]) from None  # its last line

        def flag_type(self):
            return self.file_parser.flag_type()

    flag_values = flags.FLAGS if flag_values is None else flag_values
    holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=True)
    flag_values[name].parser = Resolving(flag_values[name].parser)
    return holder


def _interrupted(signum) -> int:
    if signum == signal.SIGTERM:
        print("error: terminated (SIGTERM); no half-written file was left.", file=sys.stderr)
        return SIGTERM_EXIT
    print("error: interrupted (Ctrl-C); no half-written file was left.", file=sys.stderr)
    return SIGINT_EXIT


def run(main, user_errors: tuple = (), config_flag: str | None = None) -> None:
    """``absl.app.run(main)`` with one-line errors and exit codes (see the module docstring).
    ``config_flag``: the name of the script's config flag (:func:`define_config_flag`), whose keys the
    error lines then name as flags."""
    from absl import app

    def guarded(argv):
        try:
            return main(argv)
        except BaseException as err:  # noqa: BLE001 - sorted below; anything else is re-raised
            interrupted = isinstance(err, (KeyboardInterrupt, Terminated))
            if _received or interrupted:  # the notes say what was left (a training run: its workdir's backup)
                for note in getattr(err, "__notes__", ()):
                    print(note, file=sys.stderr)
            if _received:  # the signal's exception, perhaps re-raised by TensorFlow as another type
                return _interrupted(_received[0])
            if interrupted:  # raised without a signal
                return _interrupted(signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
            if isinstance(err, (ValueError, OSError, *user_errors)):
                line = _one_line(err)
                if config_flag:
                    from absl import flags

                    line = as_flags(line, config_flag, list(flags.FLAGS[config_flag].value or ()))
                print(f"error: {line}", file=sys.stderr)
                return 1
            raise

    _received.clear()
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)  # even where the parent ignored SIGINT
    app.run(guarded, flags_parser=_parse_flags)
