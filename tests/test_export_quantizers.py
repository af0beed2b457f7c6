"""Exact integer TFLite export of the other quantizer families: LSQ, PACT, Bi-Real (sign activations)."""

import keras
import pytest

import agq_keras
from agq_keras import export

pytest.importorskip("ai_edge_litert")  # the `export` extra; CI installs it through the `test` extra

from export_checks import CALIB, TEST, check_explained, load_data, train  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return load_data()


# each case trains a net for 25 steps: LSQ in the default tier, PACT and Bi-Real in the slow tier
@pytest.mark.parametrize("family", ["lsq", pytest.param("pact", marks=pytest.mark.slow),
                                    pytest.param("bireal", marks=pytest.mark.slow)])
def test_lsq_pact_and_bireal_nets_export_exactly(data, family):
    """LSQ (learned-step weights and activations), PACT (learned clip) and Bi-Real (±alpha per
    channel weights, sign activations; plain birealnet20) export with their grids: codes on the grid,
    thresholds (or an exact sign threshold) in every conv after the stem, int8 I/O, and every
    disagreement with F explained (tests/export_checks.py): the k-bit and sign tensors equal F's op by
    op except at F's float32 ties, and the rest is within the head's rounding budget."""
    x, y, xt, yt = data
    keras.utils.set_random_seed(3)
    arch, bits = ("birealnet20", 1) if family == "bireal" else ("resnet20", 2)
    f = train(agq_keras.build(arch, plain=True, quantizer=family, w_bits=bits, a_bits=bits, num_classes=10,
                              input_shape=(28, 28, 1)), x[:800], y[:800], epochs=1, seed=3)  # 25 steps
    model, plan, notes = export.convert(f, x[:CALIB])
    assert not [n for n in notes if "stage" in n], notes  # no fallback inside the blocks
    report = export.verify(model, f, xt[:100], yt[:100], plan=plan, latency_runs=0)
    assert report["float_tensors"] == [] and report["io_types"] == {"input": "INT8", "output": "INT8"}
    rows = [r for r in report["grid_check"] if r["layer"].startswith("stage")]
    assert rows and all(r["on_grid"] and r["levels_max"] <= 2**bits for r in rows), rows
    # the convs after the stem write k-bit tensors with thresholds (F's for every accumulator value, or
    # the closest where none exists: explain() allows one accumulator unit there), or sign() outputs,
    # exact by construction (intmath.sign_weights)
    graph = plan.graph
    body = [op for op in graph.ops if graph.tensors[op.output].grid is not None and op.inputs[0] != graph.input]
    signs = [op for op in graph.ops if graph.tensors[op.output].sign]
    assert bool(body) != bool(signs) and (family == "bireal") == bool(signs)
    summary = check_explained(f, model, plan, xt[:TEST])
    assert summary["images"] >= 50


