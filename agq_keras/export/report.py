"""A verification report for a person: :func:`summary` turns the JSON-able dict of
:func:`agq_keras.export.verify` / :func:`~agq_keras.export.verify_detector` (which stays available, e.g. as
``<output>.json``) into short lines: one per runtime (argmax agreement with F, top-1 of the file and of F;
a detector: the share of output codes that are F's, and AP), then size and latency against the float32
TFLite, then the weights and activation grids, each line saying what it checks so that none reads as
contradicting another.

>>> report = export.verify(data, f, x_test, y_test, plan=plan, float_bytes=f32)
>>> print("\\n".join(export.summary(report)))
reference  agreement 99.97 % of 10000 images; top-1 88.12 % (F 88.10 %, +0.02 pt)
...
"""

from __future__ import annotations


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _runtime_lines(report: dict) -> list[str]:
    agreement = report.get("agreement_per_runtime") or {}
    top1 = report.get("top1_per_runtime") or {}
    width = max((len(r) for r in agreement), default=0)
    lines = []
    for runtime, value in agreement.items():
        count = report.get("images_per_runtime", {}).get(runtime, report.get("images"))
        line = f"{runtime:<{width}}  agreement {_pct(value)} of {count} images"
        if runtime in top1 and "top1_keras" in report:
            line += (f"; top-1 {_pct(top1[runtime])} (F {_pct(report['top1_keras'])}, "
                     f"{100 * (top1[runtime] - report['top1_keras']):+.2f} pt)")
        lines.append(line)
    return lines


def _detector_lines(report: dict) -> list[str]:
    per_output = report.get("agreement_per_output") or {}
    runtimes = list(next(iter(per_output.values()), {}))
    width = max((len(r) for r in runtimes), default=0)
    lines = []
    for runtime in runtimes:
        worst = min(per_output.values(), key=lambda by_runtime: by_runtime[runtime])
        name = next(n for n, v in per_output.items() if v is worst)
        line = (f"{runtime:<{width}}  output codes equal to F's rounded: {_pct(worst[runtime])} in the least "
                f"agreeing output ({name}), of {len(per_output)} outputs")
        ap = report.get("ap", {})
        if runtime in ap and "keras" in ap:
            line += (f"; AP {100 * ap[runtime]['AP']:.2f} (F {100 * ap['keras']['AP']:.2f}, "
                     f"{100 * (ap[runtime]['AP'] - ap['keras']['AP']):+.2f})")
        lines.append(line)
    return lines


def _parts(row: dict) -> bool:
    """A row of :func:`agq_keras.export.tensor_agreement` whose tensor, on one of F's grids (not a calibrated
    one), parts from F."""
    return row["mismatch"] > 0 and row["grid"] != "calibrated"


def first_parting(rows: list) -> dict | None:
    """The first row of :func:`agq_keras.export.tensor_agreement` that parts from F (:func:`_parts`), or None."""
    return next(filter(_parts, rows), None)


def summary(report: dict, notes: bool = True) -> list[str]:
    """The lines of a report (see the module docstring); ``notes``: end with the export's notes."""
    lines = _detector_lines(report) if "agreement_per_output" in report else _runtime_lines(report)
    size = f"size {report['size_bytes']} bytes"
    if "size_ratio" in report:
        size += f", {report['size_ratio']:.3f}x the float32 TFLite ({report['float32_size_bytes']} bytes)"
    for kernels in ("xnnpack", "builtin"):
        if f"latency_ms_int8_{kernels}" in report:
            int8, f32 = report[f"latency_ms_int8_{kernels}"], report[f"latency_ms_float32_{kernels}"]
            size += f"; latency ({kernels}) {int8:.2f} ms, {int8 / f32:.2f}x float32's {f32:.2f} ms"
    lines.append(size)
    types = report.get("io_types")
    if types is not None:
        lines.append(f"ops {', '.join(report.get('ops', []))}; {len(report.get('float_tensors', []))} float "
                     f"tensor(s), {report.get('int16_tensors', 0)} int16 tensor(s); input/output types {types}")
    rows = report.get("grid_check")
    if rows is not None:
        off = [r["layer"] for r in rows if not r["on_grid"]]
        line = f"weights: {len(rows) - len(off)} of {len(rows)} layers store F's weight codes exactly"
        lines.append(line + (f" (not: {', '.join(off)})" if off else ""))
        ranked = [r for r in rows if r.get("threshold_exact_channels") is not None]
        if ranked:
            channels = sum(r["channels"] for r in ranked)
            exact = sum(r["threshold_exact_channels"] for r in ranked)
            everywhere = sum(r["all_runtimes_exact_channels"] for r in ranked)
            lines.append(f"activation thresholds (where k-bit outputs round): {exact} of {channels} channels exact "
                         f"under TFLite's kernels (reference, builtin), {everywhere} under every runtime (XNNPACK "
                         "too); the others keep the closest thresholds")
    if "exact_activation_tensors" in report:
        lines.append(f"activations: {report['exact_activation_tensors']} tensor(s) stored on F's k-bit grids, the "
                     "others at calibrated int8 scales")
    for runtime, rows in report.get("tensors", {}).items():  # export.tensor_agreement, per runtime
        parted = [r for r in rows if _parts(r)]
        count = f"{report['tensor_images']} images, " if "tensor_images" in report else ""
        first = (f"; the first to part: {parted[0]['tensor']} ({_pct(parted[0]['mismatch'])} of its values off)"
                 if parted else "")
        lines.append(f"per tensor ({count}{runtime}): {len(rows) - len(parted)} of {len(rows)} tensors hold F's "
                     "codes or are calibrated" + first)
    if notes:
        lines += [f"note: {note}" for note in report.get("notes", [])]
    return lines
