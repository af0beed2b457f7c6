"""The export pipeline runs once per export: ``convert`` lowers, computes the weight forms and calibrates once
(its float32 size check plans the twin from the same graph, ranges and forms), and only the max_replicas=1
fallback, whose closest int8 weights give other ranges, runs them again; the plan never changes the forms it
is given (docs/export.md, "Design")."""

import copy

import keras
import numpy as np
import pytest

import agq_keras

pytest.importorskip("ai_edge_litert")

from agq_keras import export  # noqa: E402
from agq_keras.export import calibrate, flatbuffer, lower, plan  # noqa: E402
from test_export_golden import golden_net  # noqa: E402

IMAGES = np.random.default_rng(7).uniform(0, 1, (32, 16, 16, 1)).astype(np.float32)


def _counting(monkeypatch):
    """Counts of the pipeline's stages as convert calls them."""
    counts = {"lower": 0, "weight_forms": 0, "evaluate": 0, "make_plan": 0}

    def wrap(module, name):
        inner = getattr(module, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            return inner(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)

    wrap(lower, "lower")
    wrap(plan, "weight_forms")
    wrap(calibrate, "evaluate")
    wrap(plan, "make_plan")
    return counts


def test_convert_lowers_and_calibrates_once(monkeypatch):
    f = golden_net("resnet20", True, 2)
    counts = _counting(monkeypatch)
    data, frozen, _ = export.convert(f, IMAGES)
    assert counts["lower"] == counts["weight_forms"] == counts["evaluate"] == 1, counts
    assert counts["make_plan"] in (1, 2), counts  # 2: the float32 twin of the size check, from the same graph
    assert data[4:8] == b"TFL3" and frozen.layers


def test_only_the_replicas_fallback_runs_the_pipeline_again(monkeypatch):
    keras.utils.set_random_seed(0)
    f = agq_keras.build("resnet20", plain=True, w_bits=2, a_bits=2, num_classes=1000, input_shape=(16, 16, 1))
    counts = _counting(monkeypatch)
    _, frozen, notes = export.convert(f, IMAGES)
    assert any(n.startswith("max_replicas=1 chosen") for n in notes), notes
    # the exact (259 repeats) pipeline, the float32 twin planned from it, the closest-int8 pipeline
    assert counts == {"lower": 2, "weight_forms": 2, "evaluate": 2, "make_plan": 3}, counts
    assert all(r.replicas == 1 for r in frozen.layers.values())


def test_make_plan_leaves_the_given_weight_forms_as_they_are():
    f = golden_net("resnet20", False, 2, residual_stream="int16")  # its stream re-expresses the convs' codes
    graph = lower.lower(f)
    forms = plan.weight_forms(graph, 259)
    before = copy.deepcopy(forms)
    ranges = calibrate.calibrate(graph, IMAGES, forms=forms)
    frozen = plan.make_plan(graph, ranges, forms=forms)
    assert frozen.stream_scales  # the stream was planned on its exact grid (base codes, not the forms' widened ones)
    for name, form in forms.items():
        assert np.array_equal(form.codes, before[name].codes) and np.array_equal(form.steps, before[name].steps)
        assert form.replicas == before[name].replicas and form.ranks is None
    assert flatbuffer.to_bytes(plan.make_plan(graph, ranges, forms=forms)) == flatbuffer.to_bytes(frozen)
