"""Files in and out: atomic writes that follow the umask, and one safe loader for `.keras` files.

Every file the library writes (``f.keras``, ``trainer.keras``, ``metrics.json``, PNGs, ``.tflite``,
reports) goes through :func:`atomic_write`; every `.keras` file it reads (``init_checkpoint``, the
export CLI, the two-stage recipe) through :func:`load_model`.

>>> import agq_keras
>>> f = agq_keras.load_model("runs/default/f.keras")   # or: import agq_keras; keras.models.load_model(...)

Importing ``agq_keras`` registers its layers and quantizers with Keras, so ``keras.models.load_model``
works too once the package is imported; without the import Keras cannot find ``QConv2D`` & co.
"""

from __future__ import annotations

import os
import tempfile
import zipfile


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``.

    The temporary file lies in ``path``'s folder, so the rename is atomic: readers see the old file or
    the whole new one, never a half-written file, and an exception or interrupt (KeyboardInterrupt,
    or SIGTERM turned into SystemExit by the CLIs) removes it. The file gets the mode ``open()``
    would give it (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Output directory {folder!r} does not exist; create it first.")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def load_model(path, *, what: str = "model"):
    """Load a `.keras` file saved by this library (F, or a trainer) with Keras's safe mode.

    Errors name the file and say what is wrong: missing (FileNotFoundError), not a `.keras` name,
    not a `.keras` zip archive (a text file, a truncated download), an archive Keras cannot read, or
    a model holding a ``Lambda`` layer, which safe mode refuses because loading it would run
    arbitrary code (ValueError). ``what`` names the file's role in the messages (e.g. "checkpoint").
    """
    import keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is a folder; expected a '.keras' file saved with model.save().")
    if not path.endswith(".keras"):
        raise ValueError(f"{what} {path!r} is not a Keras model file: expected a '.keras' file saved with "
                         "model.save().")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what} {path!r} is not a .keras zip archive (truncated, or not a model file); "
                         "save it again with model.save().")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{what} {path!r} is a damaged .keras archive ({err}); save it again.") from None
    if bad is not None or "config.json" not in names:
        raise ValueError(f"{what} {path!r} is a damaged or incomplete .keras archive "
                         f"({'bad member ' + repr(bad) if bad else 'no config.json'}); save it again.")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - reported with the file's name, without Keras's stack
        message = " ".join(str(err).split())
        if "Lambda" in message and "safe_mode" in message:
            raise ValueError(f"{what} {path!r} contains a Lambda layer, which is refused: loading it would run "
                             "arbitrary Python code (Keras safe mode). Rebuild the model without Lambda "
                             "layers.") from None
        raise ValueError(f"{what} {path!r} could not be loaded as a Keras model: {type(err).__name__}: "
                         f"{message}") from None
