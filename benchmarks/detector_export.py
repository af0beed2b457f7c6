"""Which outputs of a detector's int8 TFLite model move its AP (docs/export.md, "Detector").

  python benchmarks/detector_export.py --workdir=RUN [--runtime=reference]

For a detection run's F (``RUN/f.keras``, its config from ``RUN/metrics.json``): exported with the defaults
(calibrated on the run's first 500 training canvases), the COCO AP / AP50 / AP75 on the run's test canvases of
F, of the int8 model under ``--runtime``, of the int8 model's class outputs with F's box outputs and the reverse,
and of the export with int16 outputs (``output_bits=16``); and per output the mean and max |int8 - F|.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A detection run's folder (f.keras, metrics.json).", required=True)
flags.DEFINE_enum("runtime", "reference", ["reference", "builtin", "xnnpack"], "LiteRT kernels.")
flags.DEFINE_integer("calibration_images", 500, "Training canvases for calibration.")


def main(argv):
    del argv
    import numpy as np

    from agq_keras import detection, export, saving
    from agq_keras.experiments import run

    run_files = export.export_source(FLAGS.workdir)  # the run's config, f.keras and f.tflite (checked)
    config = run_files["config"]
    f = saving.load_model(run_files["model"])
    calib = run.detection_split(config, "train", FLAGS.calibration_images)[0]
    x, boxes, labels, classes = run.detection_split(config, "test", config["test_canvases"])
    anchors = run.detection_anchors(config, x.shape[1:3])
    ref = [np.asarray(o) for o in f.predict(x, batch_size=8, verbose=0)]
    half = len(ref) // 2  # class outputs, then box outputs

    def ap(outputs):
        found = detection.evaluate_outputs(outputs, boxes, labels, anchors, classes, x.shape[1:3], batch_size=8,
                                           score_threshold=config["score_threshold"])
        return "  ".join(f"{k} {100 * found[k]:.2f}" for k in ("AP", "AP50", "AP75"))

    print(f"Keras F: {ap(ref)}")
    for output_bits in (8, 16):
        data = export.convert(f, calib, output_bits=output_bits)[0]
        outs = export.runner(data, FLAGS.runtime, batch_size=8).outputs(x)
        print(f"int8 model, output_bits={output_bits}, {FLAGS.runtime}: {ap(outs)}")
        if output_bits == 8:
            print(f"  its class outputs + F's box outputs: {ap(outs[:half] + ref[half:])}")
            print(f"  F's class outputs + its box outputs: {ap(ref[:half] + outs[half:])}")
            for name, out, value in zip(f.output_names, outs, ref):
                diff = np.abs(out - value)
                print(f"  {name}: mean |diff| {diff.mean():.4f}, max {diff.max():.3f} (F's span "
                      f"{value.max() - value.min():.3f})")


if __name__ == "__main__":
    app.run(main)
