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
