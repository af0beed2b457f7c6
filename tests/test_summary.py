"""agq_keras.summary: bits, deployed memory and MACs per layer."""

import pytest

import agq_keras


def test_summary_counts_bits_memory_and_macs():
    f = agq_keras.build("resnet20", plain=True, w_bits=2, a_bits=3, num_classes=10, input_shape=(28, 28, 1))
    lines = []
    result = agq_keras.summary(f, print_fn=lines.append)
    rows = {r["name"]: r for r in result["layers"]}
    conv = rows["stage2_block1_conv1"]  # 3x3, 16 -> 32, stride 2: 14x14 output
    assert (conv["weight_bits"], conv["activation_bits"]) == (2, 3)
    assert conv["params"] == 3 * 3 * 16 * 32
    assert conv["memory_bytes"] == 3 * 3 * 16 * 32 * 2 / 8
    assert conv["macs"] == 3 * 3 * 16 * 32 * 14 * 14
    assert conv["mac_precision"] == "w2a3"
    stem = rows["stem_conv"]
    assert (stem["weight_bits"], stem["activation_bits"]) == (16, 32)
    assert stem["macs"] == 3 * 3 * 1 * 16 * 28 * 28
    bn = rows["stage1_block1_bn1"]
    assert bn["params"] == 4 * 16 and bn["memory_bytes"] == 4 * 4 * 16
    totals = result["totals"]
    assert totals["params"] == f.count_params()
    assert totals["memory_bytes"] == pytest.approx(sum(r["memory_bytes"] for r in result["layers"]))
    assert totals["memory_bytes"] < totals["float32_memory_bytes"] / 8
    assert totals["macs"] == sum(totals["macs_by_precision"].values())
    assert set(totals["macs_by_precision"]) == {"w16a32", "w2a3", "w16a16"}
    assert "stage2_block1_conv1" in lines[0] and "MACs w2a3" in lines[0]


def test_summary_of_trainer_is_f_and_rejects_non_models():
    trainer = agq_keras.build("resnet20", plain=True, aux=True, num_classes=10, input_shape=(28, 28, 1))
    names = {r["name"] for r in agq_keras.summary(trainer, print_fn=None)["layers"]}
    assert names == {r["name"] for r in agq_keras.summary(trainer.f, print_fn=None)["layers"]}
    assert not any(name.startswith("h_") for name in names)
    with pytest.raises(ValueError, match="expects a keras.Model"):
        agq_keras.summary("resnet20")
