"""build(): architectures, plain vs residual, H's structure, bad input."""

import numpy as np
import pytest
import keras

import agq_keras
from agq_keras.layers import AuxAdaptor, QConv2D, QDense
from agq_keras.training import AGTrainer

CIFAR = [("resnet20", 20), ("resnet32", 32), ("resnet56", 56)]
IMAGENET = [("resnet18", 18), ("resnet34", 34), ("resnet50", 50)]


def count_weighted(model):
    return sum(isinstance(l, (QConv2D, QDense)) for l in model.layers)


def is_shortcut(layer):
    return layer.name.endswith("_shortcut")


@pytest.mark.parametrize("arch,depth", CIFAR)
@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize("aux", [False, True])
def test_cifar_archs_build_and_run(arch, depth, plain, aux):
    model = agq_keras.build(arch, plain=plain, aux=aux, num_classes=10, input_shape=(28, 28, 1))
    f = model.f if aux else model
    assert isinstance(model, AGTrainer) == aux
    convs = [l for l in f.layers if isinstance(l, (QConv2D, QDense)) and not is_shortcut(l)]
    assert len(convs) == depth  # depth counts main-path convs + classifier
    assert any(isinstance(l, keras.layers.Add) for l in f.layers) != plain
    out = model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("arch,depth", IMAGENET)
@pytest.mark.parametrize("aux", [False, True])
def test_imagenet_archs_build_and_forward(arch, depth, aux):
    model = agq_keras.build(arch, plain=True, aux=aux, num_classes=7, input_shape=(64, 64, 3))
    f = model.f if aux else model
    convs = [l for l in f.layers if isinstance(l, (QConv2D, QDense))]
    assert len(convs) == depth
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 7)
    if aux:
        assert model.h(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 7)


def test_first_and_last_layers_are_16_bit_and_blocks_low_bit():
    f = agq_keras.build("resnet20", plain=True, w_bits=3, a_bits=4, num_classes=10, input_shape=(28, 28, 1))
    weighted = [l for l in f.layers if isinstance(l, (QConv2D, QDense))]
    assert weighted[0].name == "stem_conv" and weighted[0].weight_bits == 16
    assert weighted[-1].name == "classifier" and weighted[-1].weight_bits == 16 and weighted[-1].input_bits == 16
    assert {(l.weight_bits, l.input_bits) for l in weighted[1:-1]} == {(3, 4)}
    assert all(not l.use_bias for l in weighted)
    fp = agq_keras.build("resnet20", w_bits=32, a_bits=32, num_classes=10, input_shape=(28, 28, 1))
    assert {l.weight_bits for l in fp.layers if isinstance(l, (QConv2D, QDense))} == {32}


def test_preactivation_order_bn_relu_then_qconv():
    f = agq_keras.build("resnet20", plain=True, num_classes=10, input_shape=(28, 28, 1))
    conv = f.get_layer("stage2_block1_conv2")
    relu = conv._inbound_nodes[0].parent_nodes[0].operation
    bn = relu._inbound_nodes[0].parent_nodes[0].operation
    assert isinstance(relu, keras.layers.ReLU) and isinstance(bn, keras.layers.BatchNormalization)
    assert conv.input_quantizer is not None and conv.input_quantizer.bits == 2


@pytest.mark.parametrize("placement,expected", [("block", 9), ("layer", 18)])
def test_h_adaptors_and_transitions(placement, expected):
    t = agq_keras.build("resnet20", plain=True, aux=True, aux_placement=placement,
                        num_classes=10, input_shape=(28, 28, 1))
    adaptors = [l for l in t.h.layers if isinstance(l, AuxAdaptor) and "adaptor" in l.name]
    transitions = [l for l in t.h.layers if isinstance(l, AuxAdaptor) and "transition" in l.name]
    assert len(adaptors) == expected
    assert [l.strides for l in transitions] == [2, 2]  # two stage changes in resnet20
    assert not any(isinstance(l, AuxAdaptor) for l in t.f.layers)
    assert all(not l.name.startswith("h_") for l in t.f.layers)


def test_aux_relu_option_adds_relu_after_each_sum():
    t = agq_keras.build("resnet20", plain=True, aux=True, aux_relu=True, num_classes=10, input_shape=(28, 28, 1))
    assert sum(l.name.endswith("_relu") and "aggregate" in l.name for l in t.h.layers) == 8


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="resnet19"), r"Unknown arch 'resnet19'; allowed: .*resnet20"),
    (dict(quantizer="nope"), r"Unknown quantizer 'nope'; allowed: .*dorefa"),
    (dict(w_bits=9), r"bits=9 is not supported; allowed: 1\.\.8"),
    (dict(a_bits=0), r"bits=0 is not supported"),
    (dict(aux_lambda=-0.5), r"aux_lambda=-0\.5 .* >= 0"),
    (dict(aux_lambda=float("nan")), r"aux_lambda=nan"),
    (dict(aux_placement="stage"), r"aux_placement='stage' is not supported; allowed: block, layer"),
    (dict(input_shape=(3, 3, 1)), r"input_shape=\(3, 3, 1\) is too small for 'resnet20'.*>= 4"),
    (dict(arch="resnet18", input_shape=(28, 28, 1)), r"too small for 'resnet18'.*>= 32"),
    (dict(input_shape=(28, 28)), r"input_shape=\(28, 28\) must be \(height, width, channels\)"),
    (dict(num_classes=1), r"num_classes=1 must be an integer >= 2"),
    (dict(bogus=1), r"unknown argument\(s\) \['bogus'\]"),
    (dict(residual_stream="int4"), r"residual_stream='int4' is not supported; allowed: float, int16, int8"),
    (dict(residual_stream="int8", plain=True), r"residual_stream='int8' is for residual ResNets"),
    (dict(residual_stream="int8", w_bits=1, a_bits=1), r"residual_stream='int8' needs weight and activation grids"),
    (dict(residual_stream="int16", plain=True), r"residual_stream='int16' is for residual ResNets"),
    (dict(residual_stream="int16", arch="birealnet20"), r"residual_stream='int16' is for residual ResNets"),
    (dict(residual_stream="int16", w_bits=1, a_bits=1), r"needs weight and activation grids.*w_bits=1"),
    (dict(residual_stream="int16", w_bits=8, a_bits=8), r"needs weight and activation grids.*w_bits=8"),
])
def test_bad_input_is_a_clear_value_error(kwargs, match):
    args = dict(arch="resnet20", aux=True, num_classes=10, input_shape=(28, 28, 1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        agq_keras.build(args.pop("arch"), **args)


def test_cifar_stem_on_imagenet_arch():
    f = agq_keras.build("resnet18", stem="cifar", num_classes=10, input_shape=(28, 28, 1))
    assert f.get_layer("stem_conv").kernel_size == (3, 3)
    assert f(np.zeros((1, 28, 28, 1), "float32")).shape == (1, 10)


@pytest.mark.parametrize("bits,divisors", [(2, (3, 5, 7)), (4, (43, 87, 171))])
def test_int8_residual_stream_rounds_every_stream_writer(bits, divisors, tmp_path):
    """residual_stream="int8": a FixedStep (limit 127, bits 8) after the stem, after each block's last
    conv and projection shortcut, and after each Add; stage s's step is N_s u with N_s the smallest odd
    integer keeping 127 N_s u >= 24 * 2^(s-1) (u = 1/((2^k-1)^2), the block convs' output grid). The
    stream holds int8 codes; the .keras round trip keeps the steps."""
    from agq_keras.models import resnet

    f = agq_keras.build("resnet20", plain=False, w_bits=bits, a_bits=bits, num_classes=10,
                        input_shape=(28, 28, 1), residual_stream="int8", first_last_bits=8)
    unit = 1.0 / (2**bits - 1) ** 2
    stream = {layer.name: layer for layer in f.layers if isinstance(layer, agq_keras.quantizers.FixedStep)}
    adds = [layer.name[:-4] for layer in f.layers if isinstance(layer, keras.layers.Add)]
    expected = {"stem_stream_q"} | {f"{a}_stream_q" for a in adds} | {f"{a}_conv2_stream_q" for a in adds} \
        | {"stage2_block1_shortcut_stream_q", "stage3_block1_shortcut_stream_q"}
    assert set(stream) == expected
    for name, layer in stream.items():
        stage = 1 if name.startswith("stem") else int(name[5])
        n = divisors[stage - 1]
        assert (layer.limit, layer.bits) == (127, 8)
        assert layer.step == pytest.approx(n * unit, rel=1e-12)
        assert n % 2 == 1 and 127 * n * unit >= resnet.INT8_STREAM_RANGE * 2 ** (stage - 1)
        assert n == 1 or 127 * (n - 2) * unit < resnet.INT8_STREAM_RANGE * 2 ** (stage - 1)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    probe = keras.Model(f.inputs, f.get_layer("stage3_block3_stream_q").output)
    codes = probe(x).numpy() / stream["stage3_block3_stream_q"].step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.min() >= -128 and codes.max() <= 127
    f.save(tmp_path / "f.keras")
    clone = agq_keras.saving.load_model(str(tmp_path / "f.keras"))
    assert {l.name: (l.step, l.limit, l.bits) for l in clone.layers if isinstance(l, agq_keras.quantizers.FixedStep)} \
        == {name: (l.step, l.limit, l.bits) for name, l in stream.items()}


@pytest.mark.parametrize("plain", [True, False])
def test_8bit_edges_give_an_integer_head_shared_with_h(plain, tmp_path):
    """first_last_bits=8: final BN -> ReLU -> QGlobalAveragePooling2D (8-bit map, tied pooled grid) ->
    classifier (no input quantizer of its own) -> signed 8-bit logits; H reuses the very same pool,
    classifier and logits quantizer (their ranges move with F's passes only). F's logits are int8 codes
    times the logits step, and the ranges survive a .keras round trip. 16-bit edges keep the paper's head."""
    trainer = agq_keras.build("resnet20", plain=plain, aux=True, w_bits=2, a_bits=2, num_classes=10,
                              input_shape=(28, 28, 1), first_last_bits=8)
    f, h = trainer.f, trainer.h
    pool, logits_q = f.get_layer("pool"), f.get_layer("logits_q")
    assert isinstance(pool, agq_keras.QGlobalAveragePooling2D) and logits_q.signed and logits_q.bits == 8
    assert f.get_layer("classifier").input_quantizer is None and f.layers[-1] is logits_q
    assert h.get_layer("pool") is pool and h.get_layer("logits_q") is logits_q
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    f(x, training=True)
    y = f.predict(x, verbose=0) / (float(logits_q.top.numpy()) / 127)
    np.testing.assert_allclose(y, np.round(y), atol=1e-3)
    f.save(tmp_path / "f.keras")
    clone = agq_keras.saving.load_model(str(tmp_path / "f.keras"))
    assert float(clone.get_layer("pool").input_quantizer.top.numpy()) == float(pool.input_quantizer.top.numpy())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), f.predict(x, verbose=0))
    paper = agq_keras.build("resnet20", plain=plain, w_bits=2, a_bits=2, num_classes=10, input_shape=(28, 28, 1))
    assert isinstance(paper.get_layer("pool"), keras.layers.GlobalAveragePooling2D) and paper.layers[-1].name == "classifier"


@pytest.mark.parametrize("bits,multiple", [(2, 28), (3, 5), (4, 1)])
def test_int16_residual_stream_quantizes_stem_and_every_add(bits, multiple):
    """residual_stream="int16": a FixedStep after the stem and after each Add, step u/M with u the
    block convs' output grid (1/((2^k-1)^2)) and M the largest integer keeping >= 128 in int16."""
    trainer = agq_keras.build("resnet20", plain=False, aux=True, w_bits=bits, a_bits=bits, num_classes=10,
                              input_shape=(28, 28, 1), residual_stream="int16")
    f = trainer.f
    adds = [layer for layer in f.layers if isinstance(layer, keras.layers.Add)]
    steps = {layer.name: layer.step for layer in f.layers if isinstance(layer, agq_keras.quantizers.FixedStep)}
    assert len(steps) == len(adds) + 1 == 10
    unit = 1.0 / (2**bits - 1) ** 2
    assert all(steps[f"{a.name[:-4]}_stream_q"] == pytest.approx(unit / multiple, rel=1e-12) for a in adds)
    assert steps["stem_stream_q"] == pytest.approx(8 * unit / multiple, rel=1e-12)
    assert 32767 * unit / multiple >= 128 > 32767 * unit / (multiple + 1)
    assert f.get_layer("stem_conv").kernel_quantizer.unit == pytest.approx(8 * unit / multiple * 255)
    # the stream really is on the grid
    stream = keras.Model(f.inputs, f.get_layer("stage1_block2_stream_q").output)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    codes = stream(x).numpy() / steps["stage1_block2_stream_q"]
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    # H rounds its stream with F's own stream quantizers (they hold no state: a step and a limit)
    h_steps = [layer for layer in trainer.h.layers if isinstance(layer, agq_keras.quantizers.FixedStep)]
    assert {id(layer) for layer in h_steps} == {id(f.get_layer(name)) for name in steps} and not h_steps[0].weights
