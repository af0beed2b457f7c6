"""attach(), the one builder of H: taps with labels, exits (where the layers after F's body read the aggregate),
bridges (extra adaptors, a detector's FPN levels), checked against the same computation made from H's and F's
own layer objects; its errors; and the layout of a saved trainer's H, recorded from the code before attach
built every H (tests/data/h_checkpoint_layout.json), so that checkpoints saved then still load."""

import json
import os

import h5py
import numpy as np
import pytest
import keras

import agq_keras
from agq_keras import detection as det
from agq_keras.auxiliary import attach

X = np.random.default_rng(0).random((3, 8, 8, 2)).astype("float32")
LAYOUT = os.path.join(os.path.dirname(__file__), "data", "h_checkpoint_layout.json")


def _f():
    """x -> c1 -> bn -> ReLU -> c2 -> pool -> out (float layers: attach takes any functional F)."""
    x = inputs = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    x = keras.layers.ReLU(name="r")(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="tiny")


def _head(f, g):
    return np.asarray(f.get_layer("out")(f.get_layer("pool")(g)))


def test_default_exit_is_the_last_tap_and_the_head_reads_the_aggregate():
    f = _f()
    h = attach(f, ["c1", "c2"]).h
    g = keras.Model(h.inputs[0], h.get_layer("h_aggregate2").output)(X)  # phi_2(O_2) + phi_1(O_1)
    np.testing.assert_allclose(np.asarray(h(X)), _head(f, g), rtol=1e-6, atol=1e-6)
    assert h.get_layer("h_bn") is not f.get_layer("bn") and h.get_layer("c2") is f.get_layer("c2")


def test_an_exit_before_the_body_end_drops_the_rest_of_the_body_in_h():
    f = _f()
    h = attach(f, {"c1": "first"}, exits=["c2"]).h  # the head reads g where F's reads c2: g = phi_1(O_1)
    phi = h.get_layer("h_adaptor1_first")
    np.testing.assert_allclose(np.asarray(h(X)), _head(f, phi(f.get_layer("c1")(X))), rtol=1e-6, atol=1e-6)
    assert "c2" not in {l.name for l in h.layers} and "h_bn" not in {l.name for l in h.layers}


def test_a_bridge_adds_an_adaptor_from_what_its_reader_reads_in_h():
    f = _f()
    h = attach(f, ["c1"], bridges={"skip": ("bn", "c2")}).h
    a = h.get_layer("h_adaptor1_c1")(f.get_layer("c1")(X))  # g_1: what H's bn reads (c1 is the exit)
    b = f.get_layer("c2")(f.get_layer("r")(h.get_layer("h_bn")(a)))
    np.testing.assert_allclose(np.asarray(h(X)), _head(f, b + h.get_layer("h_skip")(a)), rtol=1e-5, atol=1e-6)
    assert isinstance(h.get_layer("h_skip_add"), keras.layers.Add)


@pytest.mark.parametrize("kwargs,match", [
    (dict(taps=["c2"], exits=["c1"]), r"exit 'c1' comes before every tap \('c2' is the first\)"),
    (dict(taps=["c1"], exits=["nope"]), r"exits \['nope'\] are not layers of F 'tiny'"),
    (dict(taps=["c1"], exits="c2"), r"exits='c2' is not allowed; give a non-empty list of layer names"),
    (dict(taps={"c1": ""}), r"taps=\{'c1': ''\} is not allowed"),
    (dict(taps=["c1"], bridges={"b": ("c2", "c1")}), r"bridges\['b'\]: its reader comes after its target 'c1'"),
    (dict(taps=["c1"], bridges={"b": ("bn", "out")}), r"bridges\['b'\] \['out'\] do not output a \(batch, height"),
    (dict(taps=["c1"], bridges={"b": "c2"}), r"bridges entry 'b': 'c2' is not allowed"),
])
def test_bad_exits_taps_and_bridges_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attach(_f(), **kwargs)


LAYOUT_CASES = {
    "resnet20_plain_block": lambda: agq_keras.build("resnet20", plain=True, aux=True, num_classes=4,
                                                    input_shape=(16, 16, 1)),
    "resnet20_residual_layer": lambda: agq_keras.build("resnet20", aux=True, aux_placement="layer",
                                                       num_classes=4, input_shape=(16, 16, 1)),
    "birealnet20_layer": lambda: agq_keras.build("birealnet20", aux=True, quantizer="bireal", w_bits=1, a_bits=1,
                                                 aux_placement="layer", num_classes=4, input_shape=(16, 16, 1)),
    "detector_fpn_adaptors_layer": lambda: det.build_detector(
        "resnet20", aux=True, fpn_adaptors=True, aux_placement="layer", input_shape=(64, 64, 1), fpn_width=8,
        head_depth=1, anchors=det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0)),
}


def h_layout(trainer, path) -> list:
    """``[h5 group, layer name, variable shapes]`` of every layer (and its sublayers) with variables saved under
    ``h/`` in the trainer's weights file (H's own: F's shared layers are saved under ``f/``): where Keras reads
    each H-owned variable back from (the group: by class and position in ``h.layers``; then by shape)."""
    trainer.save_weights(path)
    groups, weighted = [], set()
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            if name.startswith("h/layers/") and isinstance(obj, h5py.Group) and name.endswith("/vars"):
                groups.append([name, str(obj.attrs["name"]), [list(obj[k].shape) for k in sorted(obj, key=int)]])
            elif name.startswith("h/layers/") and isinstance(obj, h5py.Dataset):
                weighted.add(name.split("/")[2])
        fh.visititems(visit)
    return [g for g in groups if g[0].split("/")[2] in weighted]


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_a_saved_trainers_h_keeps_the_layout_recorded_before_attach_built_every_h(case, tmp_path):
    """The H of agq_keras.build(aux=True) and build_detector(aux=True), now attach(F), saves its own layers
    (BatchNorms, adaptors) under the same groups, names and shapes as the H the builders made themselves
    (recorded from commit 4cc8f79), so a trainer's checkpoint (a backup, ``trainer.weights.h5``) saved by that
    code loads into today's trainer, and today's into a fresh one."""
    recorded = json.load(open(LAYOUT))[case]
    trainer = LAYOUT_CASES[case]()
    layout = h_layout(trainer, str(tmp_path / "t.weights.h5"))
    assert layout == recorded
    own = [l.name for l in trainer.h.layers if l.weights and l not in trainer.f.layers]
    assert sorted(name for _, name, _ in layout if name.startswith("h_")) == sorted(own)  # all of H's own layers
    fresh = LAYOUT_CASES[case]()
    fresh.load_weights(str(tmp_path / "t.weights.h5"))
    for a, b in zip(trainer.h.weights, fresh.h.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
