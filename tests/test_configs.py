"""Every config file loads, validates and builds; ImageNet/CIFAR ones take one step on tfds mock data."""

import importlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from agq_keras import configs, quantizers
from agq_keras.data import pipeline
from agq_keras.experiments import run

FILES = sorted(f[:-3] for f in os.listdir(configs.HERE) if f.endswith(".py") and f not in ("base.py", "__init__.py"))


def load(name, variant=None):
    module = importlib.import_module(f"agq_keras.configs.{name}")
    return module.get_config(variant) if variant is not None else module.get_config()


def test_every_table_and_the_twins_exist():
    assert {"default", "fmnist", "paper"} <= set(FILES)
    assert configs.names() == tuple(f"{f}.py" for f in FILES)
    paper = importlib.import_module("agq_keras.configs.paper")
    assert {t.split("_")[0] for t in paper.TABLES} == {f"table{i}" for i in range(1, 7)}
    assert len(paper.VARIANTS) == len(set(paper.VARIANTS)) == sum(len(t["rows"]) for t in paper.TABLES.values())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resolve_paths_and_package_names(tmp_path, monkeypatch):
    """--config values: a path that exists is kept; a bare name not in the current folder is the package's."""
    fmnist = os.path.join(configs.HERE, "fmnist.py")
    monkeypatch.chdir(ROOT)  # the README's form, from a checkout
    assert configs.resolve("configs/default.py") == "configs/default.py"
    assert configs.resolve(f"{fmnist}:resnet20_plain_kd") == f"{fmnist}:resnet20_plain_kd"
    monkeypatch.chdir(tmp_path)  # any folder: the installed package's configs by name
    assert configs.resolve("fmnist.py:resnet20_plain_kd") == f"{fmnist}:resnet20_plain_kd"
    assert configs.resolve("fmnist:resnet20_plain_kd") == f"{fmnist}:resnet20_plain_kd"
    assert configs.resolve("default.py") == os.path.join(configs.HERE, "default.py")
    (tmp_path / "default.py").write_text("def get_config():\n    return {}\n")
    assert configs.resolve("default.py") == "default.py"  # a file of the current folder comes first
    for value, where in [("nope.py:x", "looked in the current directory"), ("base.py", "looked in the current"),
                         ("configs/default.py", "looked at"), ("", "looked at")]:
        with pytest.raises(FileNotFoundError, match=f"config file .* \\(--config={value}\\) not found: {where}"):
            configs.resolve(value)


def test_config_flag_loads_package_configs_by_name(tmp_path, monkeypatch):
    from absl import flags

    from agq_keras import cli

    monkeypatch.chdir(tmp_path)
    for value, baseline in [("fmnist.py:resnet20_plain_kd", "kd"), ("default", "none"),
                            (os.path.join(configs.HERE, "fmnist.py") + ":resnet20_plain_additional_losses",
                             "additional_losses")]:
        flag_values = flags.FlagValues()
        holder = cli.define_config_flag("config", flag_values=flag_values)
        flag_values(["train.py", f"--config={value}"])
        assert holder.value.baseline == baseline
        with pytest.raises(AttributeError):  # locked, as before
            holder.value.nope = 1


@pytest.mark.parametrize("name", FILES)
def test_all_variants_load_and_validate(name):
    module = importlib.import_module(f"agq_keras.configs.{name}")
    variants = getattr(module, "VARIANTS", (None,))
    for v in variants:
        c = load(name, v)
        run.validate(c)
        assert {"epochs", "batch_size", "train_subset", "seed", "strategy"} <= set(c.keys())
    if variants != (None,):
        with pytest.raises(ValueError, match="unknown variant"):
            load(name, "resnet99_nothing")


def test_paper_recipe_values():
    c = load("paper", "table1/resnet50_residual_ag_ssp")
    assert (c.epochs, tuple(c.lr_decay_epochs), c.batch_size, c.optimizer, c.learning_rate) == (
        35, (25, 30), 256, "adam", 1e-3)
    assert (c.ssp, c.ssp_delta0, c.ssp_decay_epoch, c.aux, c.aux_lambda, c.plain) == (
        True, 0.5, 20, True, 1.0, False)
    assert c.pretrain_optimizer == "sgd" and c.pretrain_epochs > 0
    assert load("paper", "table4/groupnet18_residual_blockdrop").learning_rate == 5e-4  # binary
    assert load("paper", "table4/groupnet18_residual_blockdrop").num_bases == 5
    assert load("paper", "table3/resnet18_plain_additional_losses").aux_alpha == 0.01
    t6 = load("paper", "table6/resnet18_plain_ag_ssp")
    assert (t6.dataset, t6.stem, t6.batch_size, t6.w_bits, t6.plain, t6.aux, t6.ssp) == (
        "cifar100", "cifar", 128, 2, True, True, True)
    d = load("default")
    assert (d.arch, d.plain, d.aux, d.w_bits, d.a_bits, d.dataset) == ("resnet20", True, True, 2, 2, "fashion_mnist")


@pytest.mark.parametrize("method", importlib.import_module("agq_keras.configs.fmnist").METHODS)
def test_fmnist_twins_build(method):
    c = load("fmnist", f"resnet20_{method}")
    t = run.make_trainer(c, 10, (28, 28, 1))
    assert (t.h is not None) == (c.aux or c.baseline == "kd")
    assert (t.ssp is not None) == c.ssp and (t.f_train is not None) == (c.baseline == "additional_losses")
    assert any(l.name.endswith("_add") for l in t.f.layers) == (not c.plain)
    if c.ssp:
        assert t.ssp.fragments == c.ssp_fragments and t.ssp.wa == c.ssp_wa


@pytest.mark.parametrize("quantizer", importlib.import_module("agq_keras.configs.fmnist_zoo").FAMILIES)
def test_quantizer_zoo_twins_build(quantizer):
    c = load("fmnist_zoo", f"{quantizer}_residual_ag_ssp")
    t = run.make_trainer(c, 10, (28, 28, 1))
    assert t.h is not None and t.ssp is not None
    weight_cls, act_cls = (type(q) for q in quantizers.make_pair(quantizer, c.w_bits, c.a_bits))
    assert weight_cls in {type(l.kernel_quantizer) for l in t.f.layers if hasattr(l, "kernel_quantizer")}
    assert act_cls in {type(l.input_quantizer) for l in t.f.layers if hasattr(l, "input_quantizer")}


@pytest.mark.parametrize("arch", ["resnet32", "resnet56"])
def test_deeper_twins_build(arch):
    t = run.make_trainer(load("fmnist", f"{arch}_plain_ag"), 10, (28, 28, 1))
    assert t.f.count_params() > 0


# Every paper config file (ImageNet / CIFAR-100) builds at full size, reads tfds mock data, and runs the
# forward pass of its objectives (F's loss, H's or the teacher's, the auxiliary losses) on it, one variant
# per file. The train step itself (gradients, the (g1 + lambda g2)/(1 + lambda) rule, SSP draws) is the
# same code for every config; it is stepped by the Fashion-MNIST twins above and by tests/test_ssp.py /
# test_baselines.py / test_trainer.py. Tracing it for ResNet-50 with H, SSP or LQ-Net cost minutes and
# several GB per config, which kept the README's test command over its time and memory budget.
STEP_CASES = ["table1/resnet50_residual_ag_ssp", "table1_lqnet/resnet50_residual_ag_ssp",
              "table1_bireal/birealnet18_residual_ag_ssp", "table1_groupnet/groupnet18_residual_ag",
              "table2/resnet34_plain_ag_ssp", "table2_lqnet/resnet34_plain_ag",
              "table3/resnet18_plain_kd", "table3/resnet34_residual_additional_losses",
              "table4/groupnet18_residual_blockdrop_wa", "table5/resnet34_plain_layerwise",
              "table6/resnet18_plain_ag_ssp"]


def test_every_paper_table_is_checked():
    paper = importlib.import_module("agq_keras.configs.paper")
    assert set(paper.TABLES) == {case.split("/")[0] for case in STEP_CASES}


@pytest.mark.parametrize("variant", STEP_CASES)
def test_paper_configs_build_and_run_on_mock_data(variant):
    c = load("paper", variant)
    with tfds.testing.mock_data(num_examples=4):
        ds, classes, shape = pipeline.make(c.dataset, "train", batch_size=2, image_size=64, data_dir="/nonexistent")
        x, y = next(iter(ds))
    assert classes == (1000 if c.dataset == "imagenet2012" else 100)
    t = run.make_trainer(c, classes, shape)
    assert (t.h is not None) == (c.aux or c.baseline == "kd") and (t.ssp is not None) == c.ssp
    assert (t.f_train is not None) == (c.baseline == "additional_losses")
    t.compile(optimizer=run.make_optimizer(c.optimizer, c.learning_rate))
    loss_f, loss_h, y_f, _ = t.objectives(x, y, training=True)
    assert np.isfinite(float(loss_f)) and (loss_h is None) == (t.h is None)
    assert loss_h is None or np.isfinite(float(loss_h))
    assert y_f.shape == (2, classes)


def test_checkout_configs_are_the_top_level_folder():
    """From a checkout (not installed), ``agq_keras.configs`` is the repository's ``configs/`` folder: one copy."""
    assert os.path.dirname(configs.__file__) == os.path.join(ROOT, "configs") == configs.HERE
    assert not os.path.exists(os.path.join(ROOT, "agq_keras", "configs"))


def test_wheel_installs_the_configs_as_the_package_configs(tmp_path):
    """setup.py's package-dir mapping: the wheel holds configs/*.py as agq_keras/configs/*.py, and no study,
    scripts or tests. Built from a copy of the checkout (setuptools writes build/ and *.egg-info next to
    setup.py); pip's own build, no network (no build isolation, no dependencies)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("agq_keras", "configs", "scripts", "tests"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "--no-index", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").iterdir()
    names = zipfile.ZipFile(wheel).namelist()
    want = {f"agq_keras/configs/{f}" for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
    assert want and want <= set(names)
    assert {n.split("/")[0] for n in names} == {"agq_keras", wheel.name.split("-py3")[0] + ".dist-info"}
