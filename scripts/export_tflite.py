"""Export F to a full-integer TFLite model (and verify it against the Keras F).

    python scripts/export_tflite.py --workdir=runs/default [--verify]          # a training run's F and data
    python scripts/export_tflite.py --model=f.keras --output=f.tflite [--dataset=fashion_mnist|cifar100|
        imagenet2012|npz] [--data_dir=...] [--verify] [--c_array] [--max_replicas=N] [--output_range=top]

``--workdir`` exports the run's ``f.keras`` to ``f.tflite`` in the same folder and takes the dataset,
its folder, image size and classes from the run's config (metrics.json), so calibration and
verification images get the run's own preprocessing. Writes ``f.tflite`` (int8 in/out, builtin int8
ops), with ``--verify`` also ``f.json`` (agreement per runtime, top-1, grid check, ops, Edge TPU
check, sizes, latency), with ``--c_array`` ``f.cc`` + ``f.h`` for TensorFlow Lite Micro. See
docs/export.md.

A detection run's ``--workdir`` (``configs/detection.py``) exports the detector F (one output per level and
head), calibrated on its first training canvases; ``--verify`` compares every output and prints the COCO AP of
the int8 model per runtime next to the Keras F's on the run's test canvases (``--verify_images`` overrides
their number). Decoding and NMS run outside the model (no TFLite_Detection_PostProcess custom op).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's folder: exports its f.keras with its config's data.")
flags.DEFINE_string("model", None, "F (or an AG trainer) saved as .keras (default: WORKDIR/f.keras).")
flags.DEFINE_string("output", None, "Path of the .tflite to write, its folder must exist (default: WORKDIR/f.tflite).")
flags.DEFINE_enum("dataset", None, ["fashion_mnist", "cifar100", "imagenet2012", "npz"],
                  "Calibration / verification data (default: the run's, else fashion_mnist).")
flags.DEFINE_string("data_dir", None, "Folder of the dataset files, or the .npz file (default: the run's, "
                    "else the dataset's own).")
flags.DEFINE_integer("image_size", None, "imagenet2012 crop size (default: the run's, else 224).")
flags.DEFINE_integer("num_classes", None, "npz: number of classes (default: the run's).")
flags.DEFINE_string("runtimes", "builtin,xnnpack", "--verify: runtimes to compare, of reference, builtin, "
                    "xnnpack, micro (TensorFlow Lite Micro, on the first --micro_images).")
flags.DEFINE_integer("micro_images", 1000, "--verify: test images run through TensorFlow Lite Micro (one per invoke).",
                     lower_bound=0)
flags.DEFINE_integer("calibration_images", 500, "Training images used to calibrate non-grid tensors.", lower_bound=1)
flags.DEFINE_bool("verify", False, "Compare with the Keras F on the test set; write <output>.json.")
flags.DEFINE_integer("verify_images", 10000, "Test images for --verify (a detection run: default its test canvases).",
                     lower_bound=1)
flags.DEFINE_bool("c_array", False, "Also write <output>.cc/.h (aligned C array for TFLite Micro).")
flags.DEFINE_integer("max_replicas", None, "Most input repeats for wide weight codes (1: plain int8 weights; "
                     "default: 259 unless the file would outgrow its float32 twin, then 1, with a note).")
flags.DEFINE_enum("output_range", "top", ["top", "full"], "int8 range of the logits (see docs/export.md).")
flags.DEFINE_enum("residual_bits", "auto", ["auto", "16", "8"], "Residual stream of residual nets: auto (F's "
                  "own: int8 for residual_stream=int8, else int16), int16 (16x8 kernels) or int8 (fully 8-bit, "
                  "e.g. for the Edge TPU; exact only for an F trained with residual_stream=int8).")
flags.DEFINE_enum("head_bits", "8", ["8", "16"], "Pooled features of the head: int8 (fully 8-bit plain nets, "
                  "Edge TPU) or int16 (16x8 classifier: finer, e.g. for PACT/LSQ nets).")
flags.DEFINE_enum("output_bits", "auto", ["auto", "8", "16"], "Outputs: auto (int8 for one output, int16 for a "
                  "detector's several), int8, or int16 (logits: with --head_bits=16, near-tied classes keep F's "
                  "order; no Edge TPU).")
flags.DEFINE_enum("weights", "int8", ["int8", "packed"], "Weight storage: int8, or packed INT4 for the convs of "
                  "<= 4-bit grids (half the bytes; XNNPACK runs them on the builtin kernels; no Edge TPU).")
flags.DEFINE_integer("per_tensor", 0, "--verify: also compare every integer tensor with F's value at the same "
                     "place on this many test images, under each of --runtimes (0: skip); the rows go to "
                     "<output>.json.", lower_bound=0)
flags.DEFINE_integer("latency_runs", 50, "Runs per model for the int8 vs float32 latency in --verify (0: skip).",
                     lower_bound=0)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from agq_keras import export  # ImportError without the `export` extra: reported in one line
    from agq_keras.data import pipeline
    from agq_keras.experiments import run

    where = export.export_source(FLAGS.workdir, model=FLAGS.model, output=FLAGS.output, dataset=FLAGS.dataset,
                                  data_dir=FLAGS.data_dir, image_size=FLAGS.image_size,
                                  num_classes=FLAGS.num_classes)
    if FLAGS.per_tensor and not FLAGS.verify:
        raise ValueError(f"--per_tensor={FLAGS.per_tensor}: allowed: 0 (skip), or a number of test images with "
                         "--verify.")
    runtimes = tuple(r for r in FLAGS.runtimes.split(",") if r)
    bad = [r for r in runtimes if r not in export.RUNTIMES]
    if bad:
        raise ValueError(f"--runtimes: {', '.join(bad)} unknown; allowed: {', '.join(export.RUNTIMES)}.")
    if os.path.isdir(where["output"]):
        flag = f"--output={FLAGS.output}" if FLAGS.output else f"--workdir={FLAGS.workdir} (its f.tflite)"
        raise IsADirectoryError(f"{flag} is a folder; give the path of the .tflite file to write, e.g. "
                                f"{os.path.join(where['output'], 'f.tflite')}.")
    out_dir = os.path.dirname(os.path.abspath(where["output"]))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"Output directory {out_dir!r} does not exist; create it first.")
    f, notes = export.resolve_model(where["model"])

    detector = where["config"].get("task") == "detection"

    def load_images(split, count):
        if detector:  # images, boxes, labels, classes of the run's detection data
            return run.detection_split(where["config"], split, count)
        return pipeline.arrays(where["dataset"], split, count, **where["data"])

    calib = load_images("train", FLAGS.calibration_images)[0]
    options = dict(max_replicas=FLAGS.max_replicas, output_range=FLAGS.output_range,
                   residual_bits=None if FLAGS.residual_bits == "auto" else int(FLAGS.residual_bits), head_bits=int(FLAGS.head_bits),
                   output_bits=None if FLAGS.output_bits == "auto" else int(FLAGS.output_bits),
                   weights=FLAGS.weights)
    data, plan, notes2 = export.convert(f, calib, **options)
    for note in notes + notes2:
        print("note:", note)
    export.save_atomic(data, where["output"])
    print(f"wrote {where['output']} ({len(data)} bytes)")
    stem = os.path.splitext(where["output"])[0]
    if FLAGS.c_array:
        name = os.path.basename(stem).replace("-", "_").replace(".", "_")
        name = name if name[:1].isalpha() else "model_" + name
        source, header = export.c_array(data, name)
        export.save_atomic(header.encode(), stem + ".h")
        export.save_atomic(source.encode(), stem + ".cc")
        print(f"wrote {stem}.cc / {stem}.h")
    if FLAGS.verify:
        float_bytes = export.convert(f, calib, mode="float32", max_replicas=FLAGS.max_replicas,
                                     output_range=FLAGS.output_range)[0]
        kwargs = dict(plan=plan, float_bytes=float_bytes, latency_runs=FLAGS.latency_runs, runtimes=runtimes,
                      micro_images=FLAGS.micro_images)
        if detector:
            count = FLAGS.verify_images if FLAGS["verify_images"].present else where["config"]["test_canvases"]
            x, boxes, labels, classes = load_images("test", count)
            report = export.verify_detector(
                data, f, x, boxes, labels, run.detection_anchors(where["config"], x.shape[1:3]), classes,
                detect_kwargs=dict(score_threshold=where["config"]["score_threshold"]), **kwargs)
        else:
            x, y = load_images("test", FLAGS.verify_images)
            report = export.verify(data, f, x, y, **kwargs)
        if FLAGS.per_tensor > 0:
            report["tensors"] = {rt: export.tensor_agreement(data, f, plan, x[:FLAGS.per_tensor], runtime=rt)
                                 for rt in runtimes}
            report["tensor_images"] = min(FLAGS.per_tensor, len(x))
        report["edgetpu"] = export.edgetpu_report(data)
        report["notes"] = notes + notes2
        report["deterministic"] = data == export.convert(f, calib, **options)[0]
        export.save_atomic(json.dumps(report, indent=2).encode(), stem + ".json")
        for line in export.summary(report, notes=False):  # the notes were printed above
            print(line)
        print(f"wrote {stem}.json (the full report)")


if __name__ == "__main__":
    from agq_keras import cli

    cli.run(main, user_errors=(ImportError,))
