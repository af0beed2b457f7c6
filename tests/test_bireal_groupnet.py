"""Bi-Real and GroupNet F builders: structure, H/AG compatibility, SSP blocks, round trips, bad input."""

import numpy as np
import pytest
import keras

import agq_keras
from agq_keras import structure
from agq_keras.models.builder import build_net
from agq_keras.models.groupnet import BaseSum

SHAPE = (8, 8, 1)
RNG = np.random.default_rng(0)


def layers_of(model, cls):
    return [l for l in model.layers if isinstance(l, cls)]


@pytest.mark.parametrize("plain", [False, True])
def test_birealnet_has_a_real_shortcut_around_every_conv(plain):
    f, net = build_net("birealnet18", plain=plain, quantizer="bireal", w_bits=1, a_bits=1,
                       num_classes=4, input_shape=(16, 16, 1), stem="cifar")
    convs = [c for b in net.blocks for c in b.convs]
    assert len(net.blocks) == 8 and len(convs) == 16
    adds = layers_of(f, keras.layers.Add)
    assert len(adds) == (0 if plain else len(convs))  # one shortcut per conv
    projections = [b.shortcut for b in net.blocks if b.shortcut is not None]
    assert len(projections) == (0 if plain else 3)  # the three downsampling blocks
    assert all(p.weight_bits == 16 and p.input_quantizer is None for p in projections)
    assert all(c.weight_bits == 1 and c.input_bits == 1 for c in convs)
    # No ReLU inside the binary blocks (sign of a ReLU output is constant); only the head's.
    assert [l.name for l in layers_of(f, keras.layers.ReLU)] == ["final_bn_relu"]


def test_birealnet_input_size_follows_the_stem():
    with pytest.raises(ValueError, match="too small for 'birealnet18'.*>= 32"):
        agq_keras.build("birealnet18", quantizer="bireal", w_bits=1, a_bits=1, num_classes=4,
                        input_shape=(28, 28, 1))
    f = agq_keras.build("birealnet18", quantizer="bireal", w_bits=1, a_bits=1, num_classes=4,
                        input_shape=(28, 28, 1), stem="cifar")
    assert f.output_shape == (None, 4)


def test_plain_birealnet_trains_with_ag_and_round_trips(tmp_path):
    # (the residual birealnet20 trains in tests/test_quantizer_zoo.py::test_each_family_trains_in_an_ag_trainer)
    t = agq_keras.build("birealnet20", plain=True, aux=True, quantizer="bireal", w_bits=1, a_bits=1,
                        num_classes=4, input_shape=SHAPE)
    t.compile()
    x = RNG.random((16,) + SHAPE).astype("float32")
    y = RNG.integers(0, 4, 16).astype("int32")
    history = t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert len(layers_of(t.h, agq_keras.AuxAdaptor)) >= len(structure.blocks(t.f))  # H taps every block
    path = tmp_path / "f.keras"
    t.f.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), t.f.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_groupnet_blocks_hold_m_bases_summed_with_learnable_scalars():
    m = 3
    f, net = build_net("groupnet20", quantizer="groupnet", w_bits=1, a_bits=1, num_classes=4,
                       input_shape=SHAPE, num_bases=m)
    assert len(net.blocks) == 9
    for block in net.blocks:  # an SSP fragment (a block) lists every base's convs
        assert len(block.convs) == 2 * m and len({id(c) for c in block.convs}) == 2 * m
        assert [len(base) for base in net.bases[block.name]] == [2] * m
        assert all(c.weight_bits == 1 and c.input_bits == 1 for c in block.convs)
    sums = layers_of(f, BaseSum)
    assert len(sums) == 9
    for s in sums:
        np.testing.assert_allclose(s.scales.numpy(), np.full(m, 1 / m))
    # Each base has its own BNs: 2 per base per block, + stem, shortcut BNs and the final BN.
    bns = layers_of(f, keras.layers.BatchNormalization)
    assert len(bns) == 9 * 2 * m + 1 + 2 + 1
    # M bases cost M times the block parameters of the 1-base net.
    _, net1 = build_net("groupnet20", quantizer="groupnet", w_bits=1, a_bits=1, num_classes=4,
                        input_shape=SHAPE, num_bases=1)
    kernels = lambda net: sum(int(np.prod(c.kernel.shape)) for b in net.blocks for c in b.convs)
    assert kernels(net) == m * kernels(net1)


def test_groupnet_base_sum_is_the_weighted_sum():
    layer = BaseSum(3)
    xs = [RNG.random((2, 4)).astype("float32") for _ in range(3)]
    layer.build([x.shape for x in xs])
    layer.scales.assign([0.5, -1.0, 2.0])
    np.testing.assert_allclose(layer(xs).numpy(), 0.5 * xs[0] - xs[1] + 2 * xs[2], rtol=1e-6)
    assert BaseSum.from_config(layer.get_config()).num_bases == 3


@pytest.mark.parametrize("placement", ["block", "layer"])
def test_groupnet_with_ag_shares_bases_and_scalars(placement):
    t = agq_keras.build("groupnet20", aux=True, quantizer="groupnet", w_bits=1, a_bits=1, num_classes=4,
                        input_shape=SHAPE, num_bases=2, aux_placement=placement)
    shared, f_only, _ = t.variable_groups()
    shared_ids = {id(v) for v in shared}
    for s in layers_of(t.f, BaseSum):
        assert id(s.scales) in shared_ids  # lambda_i are F's weights, used by H too
    blocks = structure.blocks(t.f)
    assert len(blocks) == 9 and all(len([c for c in b.layers if "_base" in c.name]) == 2 * 2 for b in blocks)
    for block in blocks:  # the bases' convs (2 per base) and the real shortcut where there is one
        assert all(id(c.kernel) in shared_ids for c in block.layers)
    adaptors = [a.name for a in layers_of(t.h, agq_keras.AuxAdaptor) if "adaptor" in a.name]
    # "layer": both bases' BNs after the first conv position, the block's output after the second
    assert len(adaptors) == (9 if placement == "block" else 3 * 9)
    if placement == "layer":
        assert {a.split("_", 2)[2] for a in adaptors if "_stage1_block1_" in a} == {
            "stage1_block1_base1_conv1", "stage1_block1_base2_conv1", "stage1_block1_conv2"}
    # (training with AG: tests/test_quantizer_zoo.py::test_each_family_trains_in_an_ag_trainer)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_groupnet_rejects_bad_number_of_bases(bad):
    with pytest.raises(ValueError, match=r"num_bases \(M\) = .* must be an integer >= 1"):
        agq_keras.build("groupnet20", quantizer="groupnet", w_bits=1, a_bits=1, num_classes=4,
                        input_shape=SHAPE, num_bases=bad)


def test_num_bases_is_only_for_groupnet():
    with pytest.raises(ValueError, match="num_bases is only for the GroupNet archs"):
        agq_keras.build("resnet20", num_classes=4, input_shape=SHAPE, num_bases=5)
