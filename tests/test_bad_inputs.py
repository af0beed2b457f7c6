"""The bad-input catalogue (docs/errors.md): every case gets one clear line naming the value and what is
allowed, a non-zero exit code from the CLIs, no traceback and no partial output."""

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import agq_keras
from agq_keras import cli, saving
from agq_keras.experiments import run
from test_train_cli import tiny  # the tiny default config of the run tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def script(name, *args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, **kwargs)


def assert_one_line_error(result, pattern, code=1):
    """Exit code ``code``, stderr is one line ``error: ...`` matching ``pattern``, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr


def leftovers(folder):
    """Files an interrupted atomic write could leave behind."""
    return [n for n in os.listdir(folder) if n.startswith(".tmp")]


# -- build() ----------------------------------------------------------------------------------------------------
BUILD = [
    (dict(w_bits=0), r"bits=0 is not supported; allowed: 1\.\.8"),
    (dict(w_bits=33), r"bits=33 is not supported; allowed: 1\.\.8"),
    (dict(w_bits=2.5), r"bits must be an integer, got 2\.5; allowed"),
    (dict(w_bits="2"), r"bits must be an integer, got '2'; allowed"),
    (dict(a_bits=0), r"bits=0 is not supported"),
    (dict(arch="resnet99"), r"Unknown arch 'resnet99'; allowed: .*resnet20"),
    (dict(quantizer="int3"), r"Unknown quantizer 'int3'; allowed: .*dorefa"),
    (dict(aux=True, aux_lambda=-1.0), r"aux_lambda=-1.0 is not allowed; it must be a finite number >= 0"),
    (dict(aux=True, aux_lambda=math.nan), r"aux_lambda=nan is not allowed"),
    (dict(arch="resnet18", input_shape=(16, 16, 3)), r"input_shape=\(16, 16, 3\) is too small for 'resnet18'.*>= 32"),
    (dict(num_classes=0), r"num_classes=0 must be an integer >= 2"),
    (dict(aux=True, aux_placement="stage"), r"aux_placement='stage' is not supported; allowed: block, layer"),
    (dict(first_last_bits=4), r"first_last_bits=4 is not supported; allowed: 8, 16, 32"),
]


@pytest.mark.parametrize("kwargs,match", BUILD, ids=[str(k) for k, _ in BUILD])
def test_build_rejects(kwargs, match):
    kwargs = {"arch": "resnet20", "input_shape": (28, 28, 1), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        agq_keras.build(kwargs.pop("arch"), plain=True, **kwargs)


# -- files ------------------------------------------------------------------------------------------------------
def lambda_model(path):
    inputs = keras.Input((8, 8, 1))
    y = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    y = keras.layers.GlobalAveragePooling2D()(y)
    keras.Model(inputs, keras.layers.Dense(2)(y)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real F, the same file truncated, a text file named .keras, a Lambda model, a sigmoid model."""
    d = tmp_path_factory.mktemp("files")
    f = agq_keras.build("resnet20", plain=True, w_bits=2, a_bits=2, num_classes=10, input_shape=(28, 28, 1))
    f.save(d / "f.keras")
    data = (d / "f.keras").read_bytes()
    (d / "truncated.keras").write_bytes(data[: len(data) // 2])
    (d / "text.keras").write_text("this is not a model\n")
    (d / "notes.txt").write_text("this is not a model\n")
    inputs = keras.Input((28, 28, 1))  # the export CLI calibrates on Fashion-MNIST
    y = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    y = keras.layers.Activation("sigmoid", name="squash")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    keras.Model(inputs, keras.layers.Dense(2)(y)).save(d / "sigmoid.keras")
    return {"dir": d, "f": str(d / "f.keras"), "truncated": str(d / "truncated.keras"),
            "text": str(d / "text.keras"), "txt": str(d / "notes.txt"), "lambda": lambda_model(d / "lambda.keras"),
            "sigmoid": str(d / "sigmoid.keras")}


@pytest.mark.parametrize("kind,match", [
    ("truncated", r"is not a \.keras zip archive \(truncated, or not a model file\)"),
    ("text", r"is not a \.keras zip archive"),
    ("txt", r"is not a Keras model file: expected a '\.keras' file"),
    ("lambda", r"contains a Lambda layer, which is refused: loading it would run arbitrary Python code"),
])
def test_load_model_names_the_problem(files, kind, match):
    with pytest.raises(ValueError, match=match):
        saving.load_model(files[kind])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        saving.load_model(str(files["dir"] / "missing.keras"))


def test_every_loader_refuses_lambda(files, tmp_path):
    """safe_mode holds for each entry point that loads a model: init_checkpoint, the export, load_model."""
    from agq_keras import export

    with pytest.raises(ValueError, match="Lambda"):
        run.run(tiny(init_checkpoint=files["lambda"]), str(tmp_path / "run"))
    with pytest.raises(ValueError, match="Lambda"):
        export.resolve_model(files["lambda"])
    with pytest.raises(ValueError, match="Lambda"):
        agq_keras.load_model(files["lambda"])
    assert not (tmp_path / "run").exists()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        saving.write_text(str(tmp_path / "a.json"), "{}")
        os.umask(0o077)
        saving.write_bytes(str(tmp_path / "b.bin"), b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, cli.Terminated])
def test_interrupted_write_leaves_nothing(tmp_path, interrupt):
    target = tmp_path / "f.tflite"

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise interrupt()

    with pytest.raises(interrupt):
        saving.atomic_write(str(target), write)
    assert os.listdir(tmp_path) == []


def test_sigterm_becomes_cleanup():
    """cli.run's handler turns SIGTERM into an exception, so `finally` blocks (the atomic writers) run."""
    previous = signal.signal(signal.SIGTERM, cli._on_sigterm)
    try:
        with pytest.raises(cli.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("sig,code,message", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
@pytest.mark.parametrize("reraise_as", [None, "RuntimeError", "ValueError"])
def test_cli_exit_code_follows_the_signal(sig, code, message, reraise_as):
    """The exit code and the one-line message come from the signal received, also when the code it
    interrupted (TensorFlow tracing a function, in CI) re-raises its exception as another type."""
    wrap = f"raise {reraise_as}('wrapped by the library') from err" if reraise_as else "raise"
    program = textwrap.dedent(f"""
        import os, signal, time
        from agq_keras import cli
        def main(argv):
            try:
                os.kill(os.getpid(), {int(sig)})
                time.sleep(30)
            except BaseException as err:
                {wrap}
        cli.run(main)
        """)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"error: {message}; no half-written file was left."], result.stderr


# -- scripts/train.py -------------------------------------------------------------------------------------------
def npz(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    x_test = x
    if kind == "labels":
        y[3] = 7
    elif kind == "shapes":
        x_test = rng.random((16, 10, 10, 1)).astype("float32")
    else:
        x[2, 1, 1, 0] = np.nan
    path = tmp_path / f"{kind}.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y)
    return str(path)


# Every train.py case in Python (cheap); through the CLI, one subprocess each (a TensorFlow import, ~6 s):
# the fast suite runs one case per error path (a bad value naming its --config flag, a bad file), the rest run
# with the slow tests (CI runs both). The same holds for the --config and export_tflite.py cases below.
TRAIN = {  # case: (overrides of the tiny config, or {"workdir": ...}; message pattern)
    "epochs -1": (dict(epochs=-1), r"config\.epochs=-1 must be an integer >= 1"),
    "ssp delta0 1.5": (dict(ssp=True, ssp_delta0=1.5, ssp_decay_epoch=1), r"delta0=1\.5.*\[0, 1\]"),
    "decay epoch beyond the run": (dict(ssp=True, ssp_decay_epoch=5, epochs=3),
                                   r"ssp_decay_epoch=5 is beyond the run \(epochs=3\); allowed: 1\.\.3"),
    "missing data_dir": (dict(data_dir="/nonexistent/fmnist"), r"'/nonexistent/fmnist' does not exist"),
    "cifar100 not prepared": (dict(dataset="cifar100", data_dir="/nonexistent/tfds"),
                              r"Dataset 'cifar100' \(train\) is not prepared in /nonexistent/tfds: prepare it once"),
    "workdir is a file": (dict(workdir="afile"), r"workdir .* exists and is a file"),
    "npz labels out of range": (dict(dataset="npz", data_dir="labels", num_classes=3), r"0\.\.2"),
    "npz NaN pixel": (dict(dataset="npz", data_dir="nan", num_classes=3), r"NaN"),
    "npz splits of two shapes": (dict(dataset="npz", data_dir="shapes", num_classes=3),
                                 r"config\.dataset='npz': the test images are \(10, 10, 1\) and the training images "
                                 r"\(8, 8, 1\) \(height, width, channels\); both splits must have one shape\.$"),
    "w_bits 0": (dict(w_bits=0), r"config\.w_bits=0 is not supported by config\.quantizer='dorefa': DoReFaWeight: "
                                 r"bits=0 is not supported; allowed: 1\.\.8"),
    "a_bits 1 with lsq": (dict(quantizer="lsq", a_bits=1),
                          r"config\.a_bits=1 is not supported by config\.quantizer='lsq': LSQActivation: bits=1"),
    "quantizer unknown": (dict(quantizer="int3"), r"config\.quantizer='int3' is not supported; allowed: bireal, dorefa"),
    "arch unknown": (dict(arch="resnet99"), r"config\.arch='resnet99' is not supported; allowed: .*resnet20"),
    "truncated checkpoint": (dict(init_checkpoint="truncated"),
                             r"config\.init_checkpoint '.*truncated\.keras' is not a \.keras zip archive"),
    "text checkpoint": (dict(init_checkpoint="text"), r"is not a \.keras zip archive"),
    "first_last_bits 4": (dict(first_last_bits=4), r"config\.first_last_bits=4 is not supported; allowed: 0 "),
    "alpha negative": (dict(alpha=-0.5), r"config\.alpha=-0\.5 must be a positive number \(mobilenetv2's width"),
    "bottleneck unknown": (dict(bottleneck="flat"),
                           r"config\.bottleneck='flat' is not supported; allowed: '' \(the arch default\), linear, relu"),
    "bn_reestimation_batches -1": (dict(bn_reestimation_batches=-1),
                                   r"config\.bn_reestimation_batches=-1 must be an integer >= 0 \(0 = off"),
    "Lambda checkpoint": (dict(init_checkpoint="lambda"),
                          r"contains a Lambda layer, which is refused.*Rebuild the model without Lambda layers\.$"),
}
FAST_CLI = {"truncated checkpoint", "w_bits 0"}


def _resolve(case, tmp_path, files):
    """(config overrides, workdir) of a TRAIN case with its files made."""
    overrides, _ = TRAIN[case]
    overrides, workdir = dict(overrides), tmp_path / "run"
    if overrides.get("workdir") == "afile":
        workdir = tmp_path / "afile"
        workdir.write_text("x")
        del overrides["workdir"]
    if overrides.get("dataset") == "npz":
        overrides["data_dir"] = npz(tmp_path, overrides["data_dir"])
    if "init_checkpoint" in overrides:
        overrides["init_checkpoint"] = files[overrides["init_checkpoint"]]
    return overrides, workdir


@pytest.mark.parametrize("case", list(TRAIN))
def test_run_rejects(tmp_path, files, case):
    overrides, workdir = _resolve(case, tmp_path, files)
    with pytest.raises((ValueError, FileNotFoundError), match=TRAIN[case][1]):
        run.run(tiny(**overrides), str(workdir))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", [c if c in FAST_CLI else pytest.param(c, marks=pytest.mark.slow) for c in TRAIN])
def test_train_cli_rejects(tmp_path, files, case):
    overrides, workdir = _resolve(case, tmp_path, files)
    args = [f"--config.{k}={v}" for k, v in overrides.items()]
    result = script("train.py", "--config=configs/default.py", f"--workdir={workdir}",
                    "--config.train_subset=64", "--config.test_subset=64", *args)
    # The CLI names each config key as the flag the user typed: --config.KEY, where Python callers read config.KEY.
    assert_one_line_error(result, re.sub(r"(?<!-)config\\\.", r"--config\\.", TRAIN[case][1]))
    assert not (tmp_path / "run").exists()


def test_cli_names_config_keys_as_flags():
    keys = ["w_bits", "quantizer", "epochs", "dataset"]
    assert cli.as_flags("config.w_bits=0 is not supported by config.quantizer='dorefa'", "config", keys) == (
        "--config.w_bits=0 is not supported by --config.quantizer='dorefa'")
    assert cli.as_flags("another config (config.w_bits: 2 there, 4 now)", "config", keys) == (
        "another config (--config.w_bits: 2 there, 4 now)")
    # Not a key: a file name, a flag already written as one, a key the config lacks, a path.
    for text in ["see config.py", "give --config.epochs=1", "config.nope=1", "'/a/config.epochs'",
                 "file config.dataset.json"]:
        assert cli.as_flags(text, "config", keys) == text


def test_train_cli_unknown_key_is_a_flag_error(tmp_path):
    wd = tmp_path / "run"
    result = script("train.py", "--config=configs/default.py", f"--workdir={wd}", "--config.nope=1")
    assert_one_line_error(result, r"unknown config key 'nope' \(--config\.nope=1\); allowed: the keys of", code=2)
    assert not wd.exists()


CONFIG = {  # --config value: message pattern (exit 2: the flag is bad; nothing is written)
    "nope.py": r"config file 'nope\.py' \(--config=nope\.py\) not found: looked in the current directory \(.+\) "
               r"and among the package's configs \(.+configs: default\.py, detection\.py, fmnist\.py, ",
    "agq_keras/configs/default.py:x": r"config file 'agq_keras/configs/default\.py' \(--config=agq_keras/configs/"
                                      r"default\.py:x\) not found: looked at .+agq_keras.configs.default\.py; a "
                                      r"bare file name is looked up among the package's",
    "base.py": r"config file 'base\.py' \(--config=base\.py\) not found",  # the schema, not a config
    "fmnist.py:nope": r"flag --config=fmnist\.py:nope: ValueError: unknown variant 'nope'; allowed: resnet20_",
    "default.py:resnet20_plain_ag": r"flag --config=default\.py:resnet20_plain_ag: config file 'default\.py' has no "
                                    r"variants \(--config=default\.py:resnet20_plain_ag\); give --config=default\.py "
                                    r"alone\.$",
    os.path.join(ROOT, "configs"): r"config '.+configs' \(--config=.+configs\) is a folder; give a config "
                                                r"file in it: default\.py, detection\.py, fmnist\.py, ",
}


FAST_CONFIG = {"nope.py", "default.py:resnet20_plain_ag"}


@pytest.mark.parametrize("value", [v if v in FAST_CONFIG else pytest.param(v, marks=pytest.mark.slow) for v in CONFIG])
def test_train_cli_bad_config_value(tmp_path, value):
    """A --config naming no file (a path, or a bare name the package lacks) or an unknown variant: one line
    naming the value and where it looked, before anything is built."""
    wd = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--config={value}",
                             f"--workdir={wd}"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert_one_line_error(result, CONFIG[value], code=2)
    assert os.listdir(tmp_path) == []


# -- scripts/export_tflite.py -----------------------------------------------------------------------------------
EXPORT = {  # case: (model file, output under tmp_path, extra flags, message pattern); Python: tests/test_export.py
    "text file as the model": ("txt", "f.tflite", [], r"is not a Keras model file"),
    "text file named .keras": ("text", "f.tflite", [], r"is not a \.keras zip archive"),
    "missing output folder": ("f", "missing/f.tflite", [], r"Output directory '.*missing' does not exist; create it first"),
    "unsupported layer": ("sigmoid", "f.tflite", [], r"'squash' \(Activation\): activation 'sigmoid' \(allowed: "
                                                     r"linear, relu, relu6; softmax only as the model's last "
                                                     r"layer\)\.$"),
    "Lambda model": ("lambda", "f.tflite", [], r"contains a Lambda layer, which is refused"),
    "max_replicas 0": ("f", "f.tflite", ["--max_replicas=0"], r"max_replicas"),
    "unknown runtime": ("f", "f.tflite", ["--runtimes=builtin,gpu"],
                        r"--runtimes: gpu unknown; allowed: reference, builtin, xnnpack, micro"),
    "per_tensor without verify": ("f", "f.tflite", ["--per_tensor=20"],
                                  r"--per_tensor=20: allowed: 0 \(skip\), or a number of test images with --verify"),
    # flag errors (exit 2), before anything is converted or written
    "negative per_tensor": ("f", "f.tflite", ["--verify", "--per_tensor=-1"],
                            r"^error: flag --per_tensor=-1: -1 is not a non-negative integer$"),
    "verify_images 0": ("f", "f.tflite", ["--verify", "--verify_images=0"],
                        r"^error: flag --verify_images=0: 0 is not a positive integer$"),
    "calibration_images -5": ("f", "f.tflite", ["--calibration_images=-5"],
                              r"^error: flag --calibration_images=-5: -5 is not a positive integer$"),
    "output is a folder": ("f", ".", [], r"--output=.+ is a folder; give the path of the \.tflite file to write, "
                                         r"e\.g\. .+f\.tflite\.$"),
}
FAST_EXPORT = {"text file as the model", "unsupported layer", "verify_images 0", "output is a folder"}


def test_export_cli_workdir_must_be_a_run(tmp_path):
    """--workdir needs a finished training run (metrics.json and f.keras); without one, one line, no file."""
    pytest.importorskip("ai_edge_litert")
    assert_one_line_error(script("export_tflite.py", f"--workdir={tmp_path}"),
                          r"metrics\.json' does not exist: --workdir must be a finished training run")
    assert_one_line_error(script("export_tflite.py"), r"Give --workdir \(a training run's folder\) or both --model")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", [c if c in FAST_EXPORT else pytest.param(c, marks=pytest.mark.slow) for c in EXPORT])
def test_export_cli_rejects(tmp_path, files, case):
    pytest.importorskip("ai_edge_litert")
    model, output, extra, pattern = EXPORT[case]
    assert_one_line_error(script("export_tflite.py", f"--model={files[model]}", f"--output={tmp_path / output}",
                                 *extra), pattern, code=2 if pattern.startswith("^error: flag") else 1)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_export_cli_interrupted_leaves_no_partial_file(tmp_path, files, sig, code):
    """Interrupted while it verifies (after the .tflite is written, before the report): the report is
    not written, no temporary file is left, and the exit code says which signal."""
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "f.tflite"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "export_tflite.py"), f"--model={files['f']}",
                             f"--output={out}", "--verify", "--verify_images=10000", "--latency_runs=1000"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("wrote "):
            break
    time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "no half-written file was left" in stderr
    assert sorted(os.listdir(tmp_path)) == ["f.tflite"]  # complete (written before), no f.json, no .tmp*


def test_export_cli_without_litert_names_the_extra(tmp_path, files):
    """Without ai-edge-litert (the `export` extra) the export CLI says what to install, in one line."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ai_edge_litert.py").write_text("raise ImportError('blocked for the test')\n")
    env = {**ENV, "PYTHONPATH": str(blocker)}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_tflite.py"),
                             f"--model={files['f']}", f"--output={tmp_path / 'f.tflite'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert_one_line_error(result, r"pip install 'agq-keras\[export\]' \(ai-edge-litert\)")
    assert not (tmp_path / "f.tflite").exists()
