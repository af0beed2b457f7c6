"""The built-in pre-activation MobileNetV2: structure, stems and input sizes, alpha, H, SSP, a round trip, one AG
step, the Fashion-MNIST variants and (slow) the exact integer export."""

import numpy as np
import pytest
import keras

import agq_keras
from agq_keras import quantizers, structure
from agq_keras.configs import fmnist
from agq_keras.experiments import run
from agq_keras.layers import AuxAdaptor, QConv2D, QDense, QDepthwiseConv2D
from agq_keras.models import builder
from agq_keras.models.mobilenetv2 import INVERTED_RESIDUALS, make_divisible
from agq_keras.training import SSP, split_variables

RNG = np.random.default_rng(0)
SMALL = dict(alpha=0.35, stem="cifar", num_classes=4, input_shape=(8, 8, 1))  # the cheapest F: 8x8 -> 1x1
# the blocks of the standard table that keep an identity skip (stride 1, equal widths), ImageNet stem
IDENTITY = ["stage2_block2", "stage3_block2", "stage3_block3", "stage4_block2", "stage4_block3", "stage4_block4",
            "stage5_block2", "stage5_block3", "stage6_block2", "stage6_block3"]


def layers_of(model, cls):
    return [l for l in model.layers if isinstance(l, cls)]


def images(n, shape):
    return RNG.random((n,) + tuple(shape)).astype("float32")


@pytest.mark.parametrize("plain", [False, True])
def test_blocks_convs_quantizers_and_skips(plain):
    f, net = builder.build_net("mobilenetv2", plain=plain, w_bits=3, a_bits=4, num_classes=10,
                               input_shape=(32, 32, 3))
    assert len(net.blocks) == sum(n for _, _, n, _ in INVERTED_RESIDUALS) + 1 == 18  # + the last 1x1 conv
    assert [b.name for b in net.blocks[:3]] == ["stage1_block1", "stage2_block1", "stage2_block2"]
    assert net.blocks[-1].name == "last" and [c.name for c in net.blocks[-1].convs] == ["last_conv"]
    assert [len(b.convs) for b in net.blocks[:-1]] == [2] + [3] * 16  # no expand conv where t = 1
    depthwise = layers_of(f, QDepthwiseConv2D)
    assert len(depthwise) == 17 and all(b.convs[-2] is d for b, d in zip(net.blocks, depthwise))
    assert [d.name for d in depthwise if d.strides == (2, 2)] == [f"stage{s}_block1_depthwise" for s in (2, 3, 4, 6)]
    for block in net.blocks:
        for conv in block.convs:  # every block conv: k-bit weights, reads the k-bit activation grid
            assert conv.fragment == block.name and conv.name.startswith(block.name + "_")
            assert (conv.weight_bits, conv.input_bits) == (3, 4)
            # the default recipe: LSQ, per-channel weight steps; a linear bottleneck: the expand conv reads BN on
            # a signed grid, every other conv BN -> ReLU -> q (pre-activation)
            expand = conv.name.endswith("_expand")
            assert isinstance(conv.input_quantizer, quantizers.LSQActivation) and conv.input_quantizer.signed == expand
            assert conv.kernel_quantizer.per_channel
            parent = conv._inbound_nodes[0].parent_nodes[0].operation
            if not expand:
                assert isinstance(parent, keras.layers.ReLU)
                parent = parent._inbound_nodes[0].parent_nodes[0].operation
            assert isinstance(parent, keras.layers.BatchNormalization)
    weighted = layers_of(f, (QConv2D, QDepthwiseConv2D, QDense))
    assert weighted == net.quantized_layers()
    assert weighted[0].name == "stem_conv" and weighted[0].kernel_size == (3, 3) and weighted[0].strides == (2, 2)
    assert f(images(2, (32, 32, 3))).shape == (2, 10) and f.get_layer("last_conv").output.shape[1:] == (1, 1, 1280)
    assert (weighted[0].weight_bits, weighted[0].input_quantizer) == (16, None)
    assert weighted[-1].name == "classifier" and (weighted[-1].weight_bits, weighted[-1].input_bits) == (16, 16)
    assert [l.name for l in layers_of(f, keras.layers.Add)] == ([] if plain else [f"{b}_add" for b in IDENTITY])
    for block in net.blocks:  # a skip exactly where the block keeps its shape
        first, last = block.convs[0], block.convs[-1]
        same = tuple(first.input.shape) == tuple(last.output.shape)
        assert block.identity == (same and not plain)
    # structure (what SSP, attach and a reloaded F read) sees the builder's blocks and their outputs
    found = structure.blocks(f)
    assert [b.name for b in found] == [b.name for b in net.blocks]
    assert [b.output for b in found] == [f"{b.name}_add" if b.identity else b.convs[-1].name for b in net.blocks]


def test_relu_bottleneck_and_the_paper_quantizers():
    """bottleneck="relu" (the default for families with unsigned activations only: DoReFa) puts BN -> ReLU before
    every conv, the expand conv too; bottleneck="linear" needs a family with a signed grid."""
    for kwargs in ({"quantizer": "dorefa"}, {"bottleneck": "relu"}):
        f, net = builder.build_net("mobilenetv2", w_bits=3, a_bits=4, **SMALL, **kwargs)
        expand = f.get_layer("stage2_block1_expand")
        assert isinstance(expand._inbound_nodes[0].parent_nodes[0].operation, keras.layers.ReLU)
        assert not getattr(expand.input_quantizer, "signed", False) and net.bottleneck == "relu"
    with pytest.raises(ValueError, match="bottleneck='linear'.*quantizer='dorefa'.*lsq.*bottleneck='relu'"):
        agq_keras.build("mobilenetv2", quantizer="dorefa", bottleneck="linear", **SMALL)
    with pytest.raises(ValueError, match="bottleneck='flat' is not supported; allowed: linear, relu"):
        agq_keras.build("mobilenetv2", bottleneck="flat", **SMALL)
    with pytest.raises(ValueError, match="bottleneck='relu' is only for the MobileNet archs"):
        agq_keras.build("resnet20", bottleneck="relu", num_classes=4, input_shape=(8, 8, 1))
    assert agq_keras.build("resnet20", num_classes=4, input_shape=(8, 8, 1)).get_layer(
        "stage1_block1_conv1").input_quantizer.__class__ is quantizers.DoReFaActivation  # the paper's archs: DoReFa


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
def test_small_stem_output_shapes(size, channels):
    """(The ImageNet stem, the default, at 32x32: test_blocks_convs_quantizers_and_skips; at 28x28 it is too
    small: test_minimum_input_size_is_the_downsampling.)"""
    f = agq_keras.build("mobilenetv2", alpha=0.35, stem="cifar", num_classes=7, input_shape=(size, size, channels))
    assert f(images(2, (size, size, channels))).shape == (2, 7)
    assert f.get_layer("last_conv").output.shape[1:] == (4, 4, 1280)  # 28 -> 28, 14, 7, 4
    # the small stem keeps stage2 at full size too
    assert f.get_layer("stem_conv").strides == f.get_layer("stage2_block1_depthwise").strides == (1, 1)


def test_minimum_input_size_is_the_downsampling():
    assert builder.MIN_INPUT_SIZE["mobilenetv2"] == 32
    assert builder._spec("mobilenetv2", "cifar")[1].downsampling == 8
    for kwargs, size, minimum in [({}, 28, 32), ({"stem": "cifar"}, 7, 8)]:
        with pytest.raises(ValueError, match=rf"too small for 'mobilenetv2'.*>= {minimum} \(the arch downsamples"):
            agq_keras.build("mobilenetv2", num_classes=4, input_shape=(size, size, 1), **kwargs)


def test_alpha_scales_the_widths():
    def widths(alpha):
        net = builder.make_net("mobilenetv2", plain=False, num_classes=4, quantizer="dorefa", w_bits=2, a_bits=2,
                               first_last_bits=16, input_channels=3, alpha=alpha)
        stages = [b.convs[-1].filters for b in net.blocks[:-1] if b.name.endswith("_block1")]
        return net.stem_conv.filters, stages, net.blocks[-1].convs[0].filters

    assert widths(1.0) == (32, [16, 24, 32, 64, 96, 160, 320], 1280)
    assert widths(0.5) == (16, [8, 16, 16, 32, 48, 80, 160], 1280)  # the last conv stays 1280 for alpha <= 1
    assert widths(0.35) == (16, [8, 8, 16, 24, 32, 56, 112], 1280)
    assert widths(1.4) == (48, [24, 32, 48, 88, 136, 224, 448], 1792)
    assert [make_divisible(v) for v in (5.6, 11.2, 44.8, 33.6, 1792)] == [8, 16, 48, 32, 1792]


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0), r"alpha=0 \(the width multiplier\) must be a positive finite number"),
    (dict(alpha=-0.5), r"alpha=-0\.5 .* positive finite number"),
    (dict(alpha=float("nan")), r"alpha=nan .* positive finite number"),
    (dict(alpha=float("inf")), r"alpha=inf .* positive finite number"),
    (dict(alpha=True), r"alpha=True .* positive finite number"),
    (dict(alpha="0.5"), r"alpha='0\.5' .* positive finite number"),
    (dict(arch="resnet20", alpha=0.5), r"alpha \(the width multiplier\) is only for the MobileNet archs "
                                       r"\(mobilenetv2\), not 'resnet20'"),
    (dict(residual_stream="int8"), r"residual_stream='int8' is for residual ResNets"),
    (dict(stem="tiny"), r"stem='tiny' is not supported; allowed: imagenet, cifar"),
])
def test_bad_arguments_are_clear_value_errors(kwargs, match):
    args = {"arch": "mobilenetv2", "num_classes": 4, "input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        agq_keras.build(args.pop("arch"), **args)
    if "alpha" in kwargs and "arch" not in kwargs:  # the builder object checks it too (make_net)
        with pytest.raises(ValueError, match=match):
            builder.make_net("mobilenetv2", plain=False, num_classes=4, quantizer="dorefa", w_bits=2, a_bits=2,
                             first_last_bits=16, input_channels=3, alpha=kwargs["alpha"])


def test_int8_edges_give_resnets_integer_head():
    f = agq_keras.build("mobilenetv2", first_last_bits=8, **SMALL)
    assert isinstance(f.get_layer("pool"), agq_keras.QGlobalAveragePooling2D)
    assert f.get_layer("classifier").input_quantizer is None and f.layers[-1].name == "logits_q"
    assert f.get_layer("stem_conv").weight_bits == 8


@pytest.fixture(scope="module")
def trainer():
    """F (alpha 0.35, 8x8 inputs) with H and SSP on block fragments."""
    return agq_keras.build("mobilenetv2", aux=True, ssp={"fragments": "block"}, **SMALL)


def test_h_taps_every_block_and_shares_fs_convs(trainer):
    t = trainer
    blocks = builder.build_net("mobilenetv2", **SMALL)[1].blocks  # the builder's blocks, by name
    adaptors = [l for l in layers_of(t.h, AuxAdaptor) if "adaptor" in l.name]
    assert sorted(a.name for a in adaptors) == sorted(f"h_adaptor{p}_{b.name}" for p, b in enumerate(blocks, start=1))
    shared, f_only, h_only = split_variables(t.f, t.h)
    # H computes with F's convs and classifier: their kernels and quantizers' learned steps (LSQ, the default) ...
    kernels = {id(v) for l in structure.quantized_layers(t.f) for v in l.trainable_variables}
    assert {id(l.kernel) for l in structure.quantized_layers(t.f)} < kernels
    assert {id(v) for v in shared} == kernels
    f_bns = {id(v) for l in layers_of(t.f, keras.layers.BatchNormalization) for v in l.trainable_variables}
    assert f_bns == {id(v) for v in f_only}  # ... and its own BatchNorms
    assert all(not l.name.startswith("h_") for l in t.f.layers) and not layers_of(t.f, AuxAdaptor)
    assert {id(v) for a in layers_of(t.h, AuxAdaptor) for v in a.trainable_variables} <= {id(v) for v in h_only}
    # attach() on F (no builder: its graph and the layers' fragments) taps the same block outputs
    attached = agq_keras.auxiliary.attach(t.f)
    assert sorted(l.name for l in layers_of(attached.h, AuxAdaptor) if "adaptor" in l.name) == sorted(
        a.name for a in adaptors)


def test_one_ag_step_with_ssp_block_fragments(trainer):
    t = trainer
    blocks = builder.build_net("mobilenetv2", **SMALL)[1].blocks  # the builder's blocks, by name
    assert [[l.name for l in g] for g in t.ssp.groups] == [[c.name for c in b.convs] for b in blocks]
    t.compile(run_eagerly=True)  # the step itself; tracing it costs a minute for this 52-conv F and its H
    before = {v.path: v.numpy() for v in t.trainable_variables}
    history = t.fit(images(4, SMALL["input_shape"]), RNG.integers(0, 4, 4), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(history.history["h_loss"]).all()
    moved = {v.path for v in t.trainable_variables if not np.array_equal(before[v.path], v.numpy())}
    assert t.f.get_layer("stage4_block1_depthwise").kernel.path in moved
    assert any(path.startswith("h_adaptor") for path in moved)


def test_keras_round_trip_keeps_outputs_fragments_and_blocks(tmp_path):
    f, net = builder.build_net("mobilenetv2", **SMALL)
    x = images(4, SMALL["input_shape"])
    f(x, training=True)  # BatchNorm statistics away from their initial values
    path = tmp_path / "f.keras"
    f.save(path)
    loaded = agq_keras.load_model(path)
    np.testing.assert_allclose(loaded(x), f(x), rtol=1e-5, atol=1e-5)
    assert {l.name: l.fragment for l in structure.quantized_layers(loaded)} == {
        l.name: l.fragment for l in structure.quantized_layers(f)}
    assert len(layers_of(loaded, QDepthwiseConv2D)) == 17
    assert [(b.name, b.output) for b in structure.blocks(loaded)] == [(b.name, b.output) for b in structure.blocks(f)]
    groups = [[l.name for l in g] for g in SSP("block").partition(loaded)]
    assert groups == [[c.name for c in b.convs] for b in net.blocks]  # SSP's block fragments = the blocks


def test_fmnist_variants():
    names = [v for v in fmnist.VARIANTS if v.startswith("mobilenetv2_")]
    assert names == [f"mobilenetv2_{m}" for m in fmnist.MOBILENET_METHODS]
    for name in names:
        c = fmnist.get_config(name)
        run.validate(c)
        assert (c.stem, c.alpha, c.dataset) == ("cifar", 0.5, "fashion_mnist")
        assert (c.w_bits, c.a_bits) == ((32, 32) if "float" in name else (4, 4))
        assert c.aux == name.endswith("_ag") and c.plain == ("plain" in name)
    t = run.make_trainer(fmnist.get_config("mobilenetv2_plain_base"), 10, (28, 28, 1))
    assert t.f.name == "mobilenetv2_plain" and t.f.get_layer("stem_conv").strides == (1, 1)


def test_fmnist_variants_build_with_their_alpha():
    t = run.make_trainer(fmnist.get_config("mobilenetv2_residual_base"), 10, (28, 28, 1))
    assert t.f.get_layer("stem_conv").filters == 16 and t.f.get_layer("stage7_block1_project").filters == 160


@pytest.mark.slow  # the exporter's threshold search over ~3 600 channels (the 1280-wide last conv): ~1 min
def test_plain_2bit_export_is_exact_op_by_op():
    """A tiny plain 2-bit F with 8-bit first/last layers (exact in the export: no wide codes) and the builder's
    defaults (LSQ; the expand convs read a signed 2-bit grid, stored shifted) exports to builtin int8 ops, every
    conv's weights are on F's grid, and every k-bit tensor's codes equal F's codes except where F's own float32
    value sits at a rounding tie (tests/export_checks.py). With the earlier DoReFa default, 99 of the 100 images
    agreed under the reference and builtin kernels (not asserted: it depends on the weights; not re-counted
    with LSQ)."""
    pytest.importorskip("ai_edge_litert")
    import export_checks
    from agq_keras import export

    f = agq_keras.build("mobilenetv2", plain=True, alpha=0.35, stem="cifar", w_bits=2, a_bits=2, first_last_bits=8,
                        num_classes=10, input_shape=(32, 32, 3))
    x = (np.random.default_rng(1).integers(0, 256, (200, 32, 32, 3)) / 255).astype("float32")  # 8-bit images
    for batch in np.split(x[:100], 2):
        f(batch, training=True)  # BatchNorm statistics of these images
    model, plan, _ = export.convert(f, x[:100])
    report = export.verify(model, f, x[100:], plan=plan, latency_runs=0, runtimes=("reference",))
    assert set(report["ops"]) <= export_checks.INT8_OPS and "DEPTHWISE_CONV_2D" in report["ops"]
    assert report["float_tensors"] == [] and report["io_types"] == {"input": "INT8", "output": "INT8"}
    # the 16 expand convs' signed inputs are exact tensors (stored shifted), checked below with the others
    assert sum(t.offset == 2 and t.grid is not None for t in plan.graph.tensors.values()) == 16
    rows = {r["layer"].split("+")[0]: r for r in report["grid_check"]}
    # every conv's and depthwise conv's codes * scale / gain = q(W) * BN fold, at most 2^bits codes per channel
    for layer in layers_of(f, QConv2D) + layers_of(f, QDepthwiseConv2D):
        assert rows[layer.name]["on_grid"], rows[layer.name]
    assert all(rows[l.name]["levels_max"] <= 4 for l in layers_of(f, QDepthwiseConv2D))
    unexplained, summary = export_checks.explain(f, model, plan, x[100:])
    assert unexplained == [], (unexplained[:5], summary)
