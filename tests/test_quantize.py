"""agq_keras.quantize (any float functional model -> F), agq_keras.auxiliary.attach (H for any F) and the
structure F keeps across a .keras round trip (agq_keras.structure)."""

import numpy as np
import pytest
import keras

import agq_keras
from agq_keras import structure
from agq_keras.auxiliary import attach
from agq_keras.layers import QConv2D, QDense, QDepthwiseConv2D, QGlobalAveragePooling2D
from agq_keras.models.quantize import quantize
from agq_keras.training import baselines, default_loss, split_variables
from agq_keras.training.recipe import load_by_name
from agq_keras.training.ssp import SSP

X = np.random.default_rng(0).random((4, 16, 16, 1)).astype("float32")


def _quantizer_summary(layer):
    """A layer's config with the quantizers' auto-generated names removed."""
    config = layer.get_config()
    config.pop("name", None)
    for key in ("kernel_quantizer", "input_quantizer"):
        if isinstance(config.get(key), dict):
            inner = dict(config[key])
            inner["config"] = {k: v for k, v in inner["config"].items() if k != "name"}
            config[key] = inner
    return config


@pytest.mark.parametrize("plain", [True, False])
def test_quantize_reproduces_the_builders_f_layer_for_layer(plain):
    f32 = agq_keras.build("resnet20", plain=plain, w_bits=32, a_bits=32, num_classes=10, input_shape=(16, 16, 1))
    fq = quantize(f32, quantizer="dorefa", per_channel=False, w_bits=2, a_bits=2)
    f2 = agq_keras.build("resnet20", plain=plain, w_bits=2, a_bits=2, num_classes=10, input_shape=(16, 16, 1))
    assert load_by_name(f32, f2) > 0
    assert [(l.name, type(l)) for l in fq.layers] == [(l.name, type(l)) for l in f2.layers]
    for a, b in zip(fq.layers, f2.layers):
        assert _quantizer_summary(a) == _quantizer_summary(b), a.name
    np.testing.assert_array_equal(np.asarray(fq(X)), np.asarray(f2(X)))
    assert [b.name for b in structure.blocks(fq)] == [b.name for b in structure.blocks(f2)]


def _small_mobilenet_like():
    """Conv -> BN -> ReLU6 -> pad -> depthwise -> BN -> ReLU6 -> 1x1 project -> BN (linear) -> Add -> GAP -> Dense."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    skip = x
    y = keras.layers.ZeroPadding2D(1, name="b1_pad")(x)
    y = keras.layers.DepthwiseConv2D(3, use_bias=False, name="b1_dw")(y)
    y = keras.layers.BatchNormalization(name="b1_dw_bn")(y)
    y = keras.layers.Activation("relu", name="b1_dw_relu")(y)
    y = keras.layers.Conv2D(8, 1, use_bias=False, name="b1_project")(y)
    y = keras.layers.BatchNormalization(name="b1_project_bn")(y)
    x = keras.layers.Add(name="b1_add")([skip, y])
    x = keras.layers.Conv2D(16, 1, activation="relu", name="b2_expand")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="tiny")


def test_quantize_puts_quantizers_where_the_pre_activation_convention_says():
    model = _small_mobilenet_like()
    f = quantize(model, w_bits=2, a_bits=2)
    kinds = {l.name: type(l) for l in f.layers}
    assert kinds["stem"] is QConv2D and kinds["b1_dw"] is QDepthwiseConv2D and kinds["logits"] is QDense
    q = {l.name: l for l in structure.quantized_layers(f)}
    assert q["stem"].input_quantizer is None and q["stem"].weight_bits == 16  # first layer: the image, 16 bits
    assert q["b1_dw"].input_bits == 2 and q["b1_dw"].weight_bits == 2  # ReLU6 -> pad -> depthwise
    assert q["b1_project"].input_bits == 2  # Activation("relu") feeds it
    assert q["b2_expand"].input_quantizer is None  # fed by a sum (signed): float input
    assert q["logits"].weight_bits == 16 and q["logits"].input_bits == 16  # last layer: the edge pair
    for layer in model.layers:  # the float weights are copied
        if layer.weights and layer.name in q:
            np.testing.assert_array_equal(np.asarray(q[layer.name].kernel), np.asarray(layer.kernel))
        elif layer.weights:
            for a, b in zip(layer.get_weights(), f.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    # full precision everywhere reproduces the float model
    f32 = quantize(model, w_bits=32, a_bits=32)
    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(f32(x)), np.asarray(model(x)), atol=1e-6)


def test_quantize_policy_gives_mixed_precision_and_later_patterns_win():
    f = quantize(_small_mobilenet_like(), w_bits=2, a_bits=2,
                 policy={"b1_*": 4, "b1_project": (3, 2), "logits": {"w_bits": 8}})
    q = {l.name: l for l in structure.quantized_layers(f)}
    assert (q["b1_dw"].weight_bits, q["b1_dw"].input_bits) == (4, 4)
    assert (q["b1_project"].weight_bits, q["b1_project"].input_bits) == (3, 2)
    assert (q["logits"].weight_bits, q["logits"].input_bits) == (8, 16)
    assert (q["b2_expand"].weight_bits, q["stem"].weight_bits) == (2, 16)


def test_quantize_stream_bits_and_int8_head():
    f = quantize(_small_mobilenet_like(), w_bits=2, a_bits=2, first_last_bits=8, stream_bits=8)
    names = [l.name for l in f.layers]
    # the linear bottleneck (project BN feeding the sum) and the sum are rounded by F; the ReLU-fed tensors not
    assert {"b1_project_bn_stream_q", "b1_add_stream_q"} <= set(names)
    assert not any(n.startswith(("stem", "b1_dw")) and n.endswith("_stream_q") for n in names)
    assert isinstance(f.get_layer("pool"), QGlobalAveragePooling2D)
    assert f.get_layer("logits").input_quantizer is None  # reads the integer pool's grid
    assert f.outputs[0]._keras_history[0].name == "logits_q"
    x = np.random.default_rng(2).random((3, 16, 16, 3)).astype("float32")
    logits = np.asarray(f(x))
    step = f.get_layer("logits_q").export_grid().step
    np.testing.assert_allclose(logits / step, np.round(logits / step), atol=1e-3)  # F's logits are int8 codes


def test_quantize_round_trip_keeps_outputs_and_structure(tmp_path):
    f = agq_keras.build("resnet20", plain=True, num_classes=10, input_shape=(16, 16, 1))
    path = str(tmp_path / "f.keras")
    f.save(path)
    g = agq_keras.load_model(path)
    np.testing.assert_array_equal(np.asarray(f(X)), np.asarray(g(X)))
    assert [(b.name, b.output, b.downsamples) for b in structure.blocks(g)] == \
        [(b.name, b.output, b.downsamples) for b in structure.blocks(f)]
    ssp = SSP("block")
    assert [[l.name for l in grp] for grp in ssp.partition(g)] == [[l.name for l in grp] for grp in ssp.partition(f)]
    assert len(ssp.partition(g)) == 9
    outs = baselines.block_outputs(g)  # the additional-losses baseline accepts a reloaded F
    assert [t.shape[1] for t in outs] == [8, 4]
    trainer = attach(g)  # and AG: the same blocks tapped
    assert sum(isinstance(l, agq_keras.AuxAdaptor) for l in trainer.h.layers) == 9 + 2  # 9 adaptors, 2 transitions


@pytest.mark.parametrize("plain", [True, False])
def test_attach_on_a_built_in_f_gives_the_builders_h(plain):
    keras.utils.set_random_seed(0)
    built = agq_keras.build("resnet20", plain=plain, aux=True, num_classes=10, input_shape=(16, 16, 1))
    attached = attach(agq_keras.build("resnet20", plain=plain, num_classes=10, input_shape=(16, 16, 1)))
    same = {l.name: l for l in built.h.layers}
    with_weights = [l for l in attached.h.layers if l.weights]
    assert all(l.name in same for l in with_weights)  # the same H-owned layers, by name
    for layer in with_weights:
        layer.set_weights(same[layer.name].get_weights())
    np.testing.assert_array_equal(np.asarray(attached.h(X)), np.asarray(built.h(X)))
    shared, f_only, h_only = split_variables(attached.f, attached.h)
    f_bns = {id(v) for l in attached.f.layers if isinstance(l, keras.layers.BatchNormalization) for v in l.weights}
    assert not any(id(v) in f_bns for v in shared)  # H owns its BatchNorms
    assert {id(v) for v in shared} == {id(v) for l in structure.quantized_layers(attached.f) for v in l.trainable_weights}


def test_attach_to_a_quantized_model_trains_f_and_h():
    f = quantize(_small_mobilenet_like(), w_bits=2, a_bits=2)
    taps = structure.auto_taps(f)
    assert taps == ["b1_add", "b2_expand"]  # the sum, and the last layer of the 8x8 stage (dropout skipped)
    trainer = attach(f, aux_lambda=0.5)
    assert trainer.h.get_layer("h_b1_dw_bn") is not f.get_layer("b1_dw_bn")
    np.testing.assert_array_equal(trainer.h.get_layer("h_b1_dw_bn").get_weights()[0],
                                  f.get_layer("b1_dw_bn").get_weights()[0])  # H's BNs start as F's
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = np.random.default_rng(3).random((8, 16, 16, 3)).astype("float32")
    history = trainer.fit(x, np.arange(8) % 5, epochs=1, batch_size=4, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["h_loss"][0])
    layer_taps = attach(f, placement="layer")
    assert sum(isinstance(l, agq_keras.AuxAdaptor) for l in layer_taps.h.layers) >= 3


def _two_branch(merge):
    """conv -> ReLU -> two 1x1 convs -> ``merge`` -> Flatten -> Dense: a layer the exporter does not lower."""
    x = inputs = keras.Input((8, 8, 1))
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="stem")(x))
    a, b = keras.layers.Conv2D(2, 1, name="a")(x), keras.layers.Conv2D(2, 1, name="b")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(merge(a, b))))


CANNOT_EXPORT = r"cannot be exported to integer TFLite: "


@pytest.mark.parametrize("build_model,match", [
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.LayerNormalization(),
                               keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'layer_normalization\w*' \(LayerNormalization\) " + CANNOT_EXPORT + r"no integer TFLite lowering for "
     r"LayerNormalization \(lowered: Conv2D|QConv2D"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Activation("tanh"),
                               keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'activation\w*' \(Activation\) " + CANNOT_EXPORT + r"activation 'tanh' \(allowed: linear, relu, relu6; "
     r"softmax only as the model's last layer\)"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="sigmoid", name="squash"),
                               keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'squash' \(Conv2D\) " + CANNOT_EXPORT + r"activation 'sigmoid'"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="hard_swish", name="hs"),
                               keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'hs' \(Conv2D\) " + CANNOT_EXPORT + r"activation 'hard_silu'"),  # Keras's name for hard_swish
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Softmax(name="sm"),
                               keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'sm' \(Softmax\) " + CANNOT_EXPORT + r"a Softmax layer \(allowed: .*softmax only as the model's last"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.AveragePooling2D(
        2, name="avg"), keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'avg' \(AveragePooling2D\) " + CANNOT_EXPORT + r"no integer TFLite lowering for AveragePooling2D"),
    (lambda: _two_branch(lambda a, b: keras.layers.Concatenate(name="cat")([a, b])),
     r"layer 'cat' \(Concatenate\) " + CANNOT_EXPORT + r"no integer TFLite lowering for Concatenate"),
    (lambda: _two_branch(lambda a, b: keras.layers.Add(name="add3")([a, b, a])),
     r"layer 'add3' \(Add\) " + CANNOT_EXPORT + r"Add of 3 inputs \(allowed: 2\)"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="relu"),
                               keras.layers.UpSampling2D(interpolation="bilinear", name="up"),
                               keras.layers.Conv2D(2, 1), keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'up' \(UpSampling2D\) " + CANNOT_EXPORT + r"interpolation='bilinear' \(allowed: 'nearest'"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, dilation_rate=2, name="dil"),
                               keras.layers.Flatten(), keras.layers.Dense(2)]),
     r"layer 'dil' \(Conv2D\) " + CANNOT_EXPORT + r"dilated or grouped convolutions are not supported"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.MaxPooling2D(), keras.layers.Flatten()]),
     r"has no Conv2D, DepthwiseConv2D or Dense layer to quantize"),
])
def test_quantize_refuses_what_it_cannot_handle(build_model, match):
    with pytest.raises(ValueError, match=match):
        quantize(build_model())


class _Sub(keras.Model):
    def call(self, x):
        return x


@pytest.mark.parametrize("kwargs,match", [
    (dict(policy={"nothing_*": 4}), r"policy pattern 'nothing_\*' matches no layer; patterns must match Conv2D"),
    (dict(policy={"stem_bn": 4}), r"policy pattern 'stem_bn' matches only layers without weights to quantize"),
    (dict(policy={"b1_dw": "four"}), r"policy\['b1_dw'\] = 'four' is not allowed; give a bit width"),
    (dict(policy={"b1_dw": {"bits": 4}}), r"policy\['b1_dw'\] = \{'bits': 4\}: allowed keys are 'w_bits' and 'a_bits'"),
    (dict(policy={"b1_dw": 40}), r"layer 'b1_dw' \(DepthwiseConv2D\) at w_bits=40, a_bits=40: .*40"),
    (dict(policy=[("b1_dw", 4)]), r"policy=\[\('b1_dw', 4\)\] must be a dict"),
    (dict(quantizer="nope"), r"unknown quantizer 'nope'; allowed: "),
    (dict(first_last_bits=12), r"first_last_bits=12 is not supported; allowed: 8, 16, 32"),
    (dict(stream_bits=16), r"stream_bits=16 is not supported; allowed: None \(float\), 8"),
])
def test_quantize_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(_small_mobilenet_like(), **kwargs)


def test_quantize_and_attach_refuse_non_functional_models():
    with pytest.raises(ValueError, match=r"quantize\(\) needs a functional keras.Model"):
        quantize(_Sub())
    with pytest.raises(ValueError, match=r"the Sequential model 'seq' is not built"):
        quantize(keras.Sequential([keras.layers.Dense(2)], name="seq"))


@pytest.mark.parametrize("taps,match", [
    (["missing"], r"taps \['missing'\] are not layers of F"),
    (["pool"], r"taps \['pool'\] do not output a \(batch, height, width, channels\) tensor"),
    ([], r"taps=\[\] is not allowed; give 'auto', a non-empty list of layer names or a dict of them to non-empty "
         r"labels"),
    ("all", r"taps='all' is not allowed"),
])
def test_attach_bad_taps_are_named(taps, match):
    f = quantize(_small_mobilenet_like())
    with pytest.raises(ValueError, match=match):
        attach(f, taps)


def test_attach_needs_something_to_tap():
    inputs = keras.Input((8,))
    f = quantize(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4)(inputs))), w_bits=2, a_bits=2)
    with pytest.raises(ValueError, match=r"has nothing to tap with taps='auto'"):
        attach(f)
    with pytest.raises(ValueError, match=r"placement='stage' is not supported; allowed: block, layer"):
        attach(f, placement="stage")


def test_softmax_head_is_split_kept_and_trained_with_the_loss_that_fits():
    """A Dense softmax head (keras.applications' default classifier_activation): quantize() splits it into the
    Dense (logits) and a softmax layer, F and H end in it, compile()'s default loss is on probabilities, and a
    loss on logits is refused up front (it would train through two softmaxes)."""
    base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                             keras.layers.Conv2D(4, 3, activation="relu", name="c2"), keras.layers.Flatten(),
                             keras.layers.Dense(3, activation="softmax", name="head")])
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    f = quantize(base, w_bits=4, a_bits=4)
    assert f.get_layer("head").get_config()["activation"] == "linear"
    assert f.layers[-1].name == "head_softmax" and f.layers[-1].get_config()["activation"] == "softmax"
    f(x, training=True)
    np.testing.assert_allclose(f.predict(x, verbose=0), base.predict(x, verbose=0), atol=0.05)  # same model, 4-bit
    trainer = attach(f)
    assert trainer.h.layers[-1] is f.layers[-1]  # H ends in the same softmax
    trainer.compile()
    assert trainer.loss.get_config()["from_logits"] is False
    history = trainer.fit(x, np.arange(16) % 3, epochs=1, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["h_loss"][0])
    with pytest.raises(ValueError, match=r"loss SparseCategoricalCrossentropy\(from_logits=True\) does not fit F "
                                         r".*ends in a softmax \(layer 'head_softmax'\): give from_logits=False"):
        trainer.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logits_f = quantize(keras.Model(base.inputs, base.get_layer("head").input), w_bits=4, a_bits=4)
    assert default_loss(logits_f).get_config()["from_logits"] is True  # an F that outputs logits
