"""A PNG of predicted boxes (and the ground truth) drawn on images."""

from __future__ import annotations

import numpy as np

from agq_keras.detection.boxes import PAD_LABEL
from agq_keras.saving import atomic_write
from agq_keras.training.callbacks import pyplot


def draw_detections(images, detections, path: str, *, gt_boxes=None, gt_labels=None, class_names=None,
                    title: str = "", min_score: float = 0.3) -> bool:
    """Images in a row, predicted boxes (score >= ``min_score``) in red with their class and score, the
    ground truth (optional) dashed green; written atomically to ``path``. False (and a one-line warning)
    without matplotlib."""
    plt = pyplot(path)
    if plt is None:
        return False
    images = np.asarray(images)
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.3), squeeze=False)
    for i, ax in enumerate(axes[0]):
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_axis_off()
        if gt_boxes is not None:
            for box, label in zip(gt_boxes[i], gt_labels[i]):
                if label == PAD_LABEL:
                    continue
                y1, x1, y2, x2 = box
                ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime",
                                           linestyle="--", linewidth=1))
        boxes, scores, classes = detections[i]
        for box, score, cls in zip(boxes, scores, classes):
            if score < min_score:
                continue
            y1, x1, y2, x2 = box
            ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="red", linewidth=1.2))
            name = class_names[int(cls)] if class_names is not None else str(int(cls))
            ax.text(x1, y1 - 1, f"{name} {score:.2f}", color="red", fontsize=6, va="bottom")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True
