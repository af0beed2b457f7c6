"""QConv2D / QDense / AuxAdaptor: behaviour, config and .keras round trips."""

import numpy as np
import pytest
import keras

from agq_keras import quantizers
from agq_keras.layers import AuxAdaptor, QConv2D, QDense, QDepthwiseConv2D, QGlobalAveragePooling2D

X_IMG = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
X_VEC = np.random.default_rng(2).random((4, 12)).astype("float32")

LAYERS = [
    ("qconv", lambda: QConv2D(5, 3, padding="same", kernel_quantizer="dorefa_weight:2",
                              input_quantizer="dorefa_activation:2"), X_IMG),
    ("qconv_strided_bias", lambda: QConv2D(4, 3, strides=2, use_bias=True, bias_initializer="ones",
                                           kernel_quantizer=quantizers.DoReFaWeight(1)), X_IMG),
    ("qconv_float", lambda: QConv2D(4, 1), X_IMG),
    ("qdense", lambda: QDense(7, kernel_quantizer="fixed_point", input_quantizer="fixed_point"), X_VEC),
    ("adaptor", lambda: AuxAdaptor(6, strides=2), X_IMG),
    ("qdepthwise", lambda: QDepthwiseConv2D(3, depth_multiplier=2, padding="same", kernel_quantizer="dorefa_weight:2",
                                            input_quantizer="dorefa_activation:2", fragment="block1"), X_IMG),
    ("qdepthwise_per_channel_bias", lambda: QDepthwiseConv2D(3, strides=2, use_bias=True, bias_initializer="ones",
                                                             kernel_quantizer=quantizers.FixedPoint(8, per_channel=True)),
     X_IMG),
]


def test_qconv_equals_conv_of_quantized_tensors():
    layer = QConv2D(5, 3, padding="same", kernel_quantizer="dorefa_weight:2",
                    input_quantizer="dorefa_activation:2")
    y = layer(X_IMG).numpy()
    ref = keras.layers.Conv2D(5, 3, padding="same", use_bias=False)
    ref.build(X_IMG.shape)
    ref.kernel.assign(quantizers.dorefa_weight(layer.kernel, 2))
    expected = ref(quantizers.dorefa_activation(X_IMG, 2)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert layer.bias is None  # no bias by default


def test_qdense_equals_matmul_of_quantized_tensors():
    layer = QDense(3, kernel_quantizer="dorefa_weight:3", input_quantizer="dorefa_activation:3")
    y = layer(X_VEC).numpy()
    expected = quantizers.dorefa_activation(X_VEC, 3).numpy() @ quantizers.dorefa_weight(layer.kernel, 3).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,factory,x", LAYERS, ids=[c[0] for c in LAYERS])
def test_get_config_round_trip(name, factory, x):
    layer = factory()
    y = layer(x).numpy()
    clone = type(layer).from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), y)
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("name,factory,x", LAYERS, ids=[c[0] for c in LAYERS])
def test_keras_file_round_trip_is_bit_identical(name, factory, x, tmp_path):
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, factory()(inputs))
    y = model.predict(x, verbose=0)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), y)


def _depthwise_numpy(x, kernel, strides=1):
    """NumPy depthwise conv, padding "same", stride 1 or 2: output channel c*M + m = conv(x_c, kernel[..., c, m])."""
    kh, kw, c, m = kernel.shape
    n, h, w, _ = x.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    out = np.zeros((n, h, w, c * m))
    for i in range(h):
        for j in range(w):
            patch = xp[:, i:i + kh, j:j + kw, :]  # (n, kh, kw, c)
            out[:, i, j, :] = np.einsum("nhwc,hwcm->ncm", patch, kernel).reshape(n, c * m)
    return out[:, ::strides, ::strides, :]


def test_qdepthwise_equals_numpy_depthwise_of_quantized_tensors():
    layer = QDepthwiseConv2D(3, depth_multiplier=2, padding="same", kernel_quantizer="dorefa_weight:2",
                             input_quantizer="dorefa_activation:2")
    y = np.asarray(layer(X_IMG))
    kernel = np.asarray(layer.kernel, np.float64)
    # the quantizer sees the (kh, kw, 1, C*M) layout; DoReFa normalizes by the whole tensor's max|tanh|
    q_kernel = np.asarray(quantizers.dorefa_weight(kernel.reshape(3, 3, 1, 6).astype("float32"), 2)).reshape(kernel.shape)
    q_x = np.asarray(quantizers.dorefa_activation(X_IMG, 2), np.float64)
    np.testing.assert_allclose(y, _depthwise_numpy(q_x, q_kernel), atol=1e-5)
    assert set(np.unique(np.round(q_kernel * 3))) <= {-3, -1, 1, 3}


def test_qdepthwise_per_channel_quantizer_sees_each_output_channel():
    """A per-channel quantizer steps each of the C*M filters by its own max: the layout (kh, kw, 1, C*M)."""
    layer = QDepthwiseConv2D(3, depth_multiplier=2, kernel_quantizer=quantizers.FixedPoint(8, per_channel=True))
    layer(X_IMG)
    kernel = np.asarray(layer.kernel, np.float64).reshape(9, 6)
    kernel[:, 1] *= 100.0  # one filter far wider than the others
    layer.kernel.assign(kernel.reshape(3, 3, 3, 2))
    q = np.asarray(layer.quantized_kernel(), np.float64).reshape(9, 6)
    steps = np.abs(kernel).max(axis=0) / 127
    np.testing.assert_allclose(q, np.round(kernel / steps) * steps, rtol=1e-5, atol=1e-7)


def test_fragment_is_checked_and_kept():
    with pytest.raises(ValueError, match=r"fragment=3 must be a non-empty string"):
        QConv2D(4, 3, fragment=3)
    with pytest.raises(ValueError, match=r"fragment='' must be a non-empty string"):
        QDense(4, fragment="")
    layer = QDense(4, fragment="stage1_block2")
    assert QDense.from_config(layer.get_config()).fragment == "stage1_block2"


def test_adaptor_validates_arguments():
    with pytest.raises(ValueError, match="filters must be a positive integer, got 0"):
        AuxAdaptor(0)
    with pytest.raises(ValueError, match="strides must be a positive integer"):
        AuxAdaptor(4, strides=0)


def test_bad_quantizer_in_layer_is_clear():
    with pytest.raises(ValueError, match="Unknown quantizer 'dorefa9'"):
        QConv2D(3, 3, kernel_quantizer="dorefa9")


QUANTIZER_FACTORIES = [
    lambda: quantizers.DoReFaWeight(1), lambda: quantizers.DoReFaWeight(4),
    lambda: quantizers.DoReFaActivation(3), lambda: quantizers.FixedPoint(16), lambda: quantizers.Identity(),
    lambda: quantizers.FixedPoint(8, per_channel=True),
]


def test_static_range_survives_a_keras_file(tmp_path):
    """The 8-bit classifier input (first_last_bits=8) keeps its trained range through save/load."""
    inputs = keras.Input(X_VEC.shape[1:])
    layer = QDense(4, kernel_quantizer=quantizers.FixedPoint(8, per_channel=True),
                   input_quantizer=quantizers.RangeActivation(8))
    model = keras.Model(inputs, layer(inputs))
    model(np.abs(X_VEC), training=True)  # sets the range
    top = float(layer.input_quantizer.top.numpy())
    assert top > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(loaded.layers[-1].input_quantizer.top.numpy()) == top
    np.testing.assert_array_equal(loaded.predict(np.abs(X_VEC), verbose=0), model.predict(np.abs(X_VEC), verbose=0))


@pytest.mark.parametrize("make", QUANTIZER_FACTORIES)
def test_every_quantizer_round_trips_through_a_keras_file(make, tmp_path):
    inputs = keras.Input(X_IMG.shape[1:])
    model = keras.Model(inputs, QConv2D(3, 3, kernel_quantizer=make(), input_quantizer=make())(inputs))
    y = model.predict(X_IMG, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[-1]
    assert type(layer.kernel_quantizer) is type(model.layers[-1].kernel_quantizer)
    assert layer.kernel_quantizer.bits == model.layers[-1].kernel_quantizer.bits
    np.testing.assert_array_equal(loaded.predict(X_IMG, verbose=0), y)


def test_pool_on_integer_grids_matches_numpy_and_never_ties(tmp_path):
    """QGlobalAveragePooling2D (first_last_bits=8): the map rounded to 8 bits on its tracked range (step s),
    averaged over the P = H*W positions, the mean rounded to s*N/(2P) with N = 2P - 1. Per channel the
    pooled code is round(2S/N) of the map codes' sum S, at least 1/(2N) from a tie; the range and the
    output survive a .keras round trip."""
    x = (np.random.default_rng(4).random((3, 4, 5, 6)) * 3.0).astype("float32")
    inputs = keras.Input(x.shape[1:])
    pool = QGlobalAveragePooling2D(name="pool")
    model = keras.Model(inputs, pool(inputs))
    model(x, training=True)  # sets the map's range
    y = model.predict(x, verbose=0)
    top = float(pool.input_quantizer.top.numpy())
    assert np.isclose(top, x.max(), rtol=1e-6)
    s, p = np.float64(np.float32(top)) / 255, 20
    codes = np.round(np.clip(x, 0, top) / s)
    total = codes.sum(axis=(1, 2))
    ratio = 2 * total / (2 * p - 1)
    assert np.abs(np.abs(ratio - np.floor(ratio)) - 0.5).min() >= 1 / (2 * (2 * p - 1)) - 1e-12
    step = s * (2 * p - 1) / (2 * p)
    np.testing.assert_allclose(y, np.clip(np.round(ratio), 0, 255) * step, rtol=1e-5, atol=1e-7)
    grid = pool.output_grid()
    assert grid.levels == 255 and np.isclose(grid.step, step, rtol=1e-6)
    path = str(tmp_path / "pool.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(loaded.get_layer("pool").input_quantizer.top.numpy()) == top
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), y)


def test_pool_on_integer_grids_rejects_bad_arguments():
    with pytest.raises(ValueError, match="input_quantizer=.*not supported; allowed: an unsigned RangeActivation"):
        QGlobalAveragePooling2D(quantizers.RangeActivation(8, signed=True))
    with pytest.raises(ValueError, match="input_quantizer=.*not supported"):
        QGlobalAveragePooling2D(quantizers.DoReFaActivation(2))
    with pytest.raises(ValueError, match="fixed height and width, got \\(None, None, None, 3\\)"):
        QGlobalAveragePooling2D()(keras.Input((None, None, 3)))
