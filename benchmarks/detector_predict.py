"""``detection.predict`` on raw images of other sizes, from f.keras and from its TFLite file (docs/export.md,
"Detector").

  python scripts/export_tflite.py --workdir=RUN          # writes RUN/f.tflite (F's anchors in its metadata)
  python benchmarks/detector_predict.py --workdir=RUN [--sizes=128x128,256x256,96x160,320x240]

For a detection run on the twin (``RUN/f.keras``, ``RUN/f.tflite``, ``RUN/metrics.json``): the run's test
canvases (uint8, as generated) resized to each ``HxW`` (bilinear, antialiased; the ground-truth boxes scaled by
the same factors), then ``detection.predict`` of the Keras F and of the TFLite file (builtin kernels) on them,
with the anchors each reads from itself (none passed here), and the COCO AP / AP50 / AP75 of both in the
resized images' own pixels.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A twin detection run's folder (f.keras, f.tflite, metrics.json).", required=True)
flags.DEFINE_list("sizes", ["128x128", "256x256", "96x160", "320x240"], "Image sizes HxW to resize the canvases to.")
flags.DEFINE_integer("batch_size", 8, "Images per TFLite invoke.")


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from agq_keras import detection, export, saving
    from agq_keras.experiments import run

    run_files = export.export_source(FLAGS.workdir)  # the run's config, f.keras and f.tflite (checked)
    config = run_files["config"]
    f = saving.load_model(run_files["model"])
    runner = export.Runner(run_files["output"], batch_size=FLAGS.batch_size)
    x, boxes, labels, classes = run.detection_split(config, "test", config["test_canvases"])
    canvases = np.round(x * 255).astype(np.uint8)  # the twin's raw canvases (F saw pixels / 255)
    print(f"F {f.name}: input {f.input_size}, anchors {f.anchor_spec}, {len(f.class_names)} classes; "
          f"{len(canvases)} test canvases")
    for size in FLAGS.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        images = canvases if (h, w) == canvases.shape[1:3] else np.round(
            tf.image.resize(canvases, (h, w), antialias=True).numpy()).clip(0, 255).astype(np.uint8)
        gt = boxes * np.array([h, w, h, w], np.float32) / np.array([*canvases.shape[1:3]] * 2, np.float32)
        line = []
        for name, model in (("keras", f), ("tflite", runner)):
            found = detection.predict(model, images, box_format="yxyx", score_threshold=config["score_threshold"])
            ap = detection.coco_ap(gt, labels, [(r["boxes"], r["scores"], r["labels"]) for r in found], classes,
                                   (h, w))
            line.append(f"{name} AP {100 * ap['AP']:.2f} AP50 {100 * ap['AP50']:.2f} AP75 {100 * ap['AP75']:.2f}")
        print(f"{h}x{w}: " + " | ".join(line))


if __name__ == "__main__":
    app.run(main)
