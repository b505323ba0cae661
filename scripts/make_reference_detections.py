#!/usr/bin/env python3
"""Reference detections for pipelines/tests/reference.rs, made the way models/PROVENANCE.md says.

The Rust test runs this at test time, on the machine the test runs on, with the Python that
scripts/setup installs (onnxruntime==1.32.0, the library the daemon loads, plus numpy and
opencv-python-headless, in ${XDG_CACHE_HOME:-~/.cache}/helmetd/reference-venv). ONNX Runtime picks
its INT8 kernels by CPU (AVX2 against AVX-512 VNNI, see pipelines/src/cpu.rs), so a reference made
on one machine is not the truth on another: issue #22 was a fixture made on an AVX2 machine failing
on a VNNI one.

It writes OUT (boxes, original sizes, checksums) and, for every image, the exact letterboxed model
input onnxruntime was fed, as a lossless RGB PNG in OUT's folder under inputs/<image stem>.png:

    ~/.cache/helmetd/reference-venv/bin/python scripts/make_reference_detections.py --out /tmp/ref/r.json

Pre-processing is Ultralytics' as `yolo predict` runs it (issue #18): OpenCV decodes the JPEG
(cv2.imread, BGR), LetterBox resizes with cv2.INTER_LINEAR (bilinear interpolation without
antialiasing) and pads with cv2.copyMakeBorder, then BGR becomes RGB. pipelines/src/still.rs
reproduces OpenCV's 8-bit INTER_LINEAR bit for bit, so the remaining difference is the JPEG decoder
(libjpeg-turbo here, zune-jpeg in Rust). Those two still differ by a few grey levels on a few per
cent of the values, and without antialiasing every resized value comes from just 4 decoded pixels,
so the INT8 model's scores can still move by whole quantisation steps. The Rust test therefore
checks twice: once from the PNGs written here (same input tensor: the runtime, output decoding, NMS
and mapping back to original pixels must match exactly, scores within 0.01) and once through its
own JPEG decoder and resizer (with a documented step tolerance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "helmet_yolov12m_384x640_int8qdq.onnx"
INPUTS_DIR = "inputs"  # next to the JSON; paths in the JSON are relative to the JSON's folder
INPUT_W, INPUT_H = 640, 384
PAD = 114
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_DETECTIONS = 300


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def letterbox(bgr: np.ndarray) -> tuple[np.ndarray, float, int, int, int, int]:
    """Ultralytics LetterBox(auto=False, center=True, scaleup=True) on an OpenCV BGR image;
    returns the RGB canvas, scale, (left, top) padding and the content size."""
    h, w = bgr.shape[:2]
    r = min(INPUT_H / h, INPUT_W / w)
    new_w, new_h = round(w * r), round(h * r)  # Python round: half to even, like Ultralytics
    dw, dh = (INPUT_W - new_w) / 2, (INPUT_H - new_h) / 2
    if (w, h) != (new_w, new_h):
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    canvas = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD, PAD, PAD))
    if canvas.shape != (INPUT_H, INPUT_W, 3):
        raise SystemExit(f"letterbox of {w}x{h} gave {canvas.shape}, expected {(INPUT_H, INPUT_W, 3)}")
    return np.ascontiguousarray(canvas[:, :, ::-1]), r, left, top, new_w, new_h


def to_nchw(canvas: np.ndarray) -> np.ndarray:
    """RGB HWC uint8 canvas → float32 [1, 3, H, W] in [0, 1]."""
    x = canvas.astype(np.float32) / 255.0
    return x.transpose(2, 0, 1)[None].copy()


def write_input_png(canvas: np.ndarray, path: Path) -> None:
    """Saves the RGB model input losslessly (8-bit RGB PNG, maximum zlib effort) and checks that
    it reads back bit-identical, so the Rust test feeds the same tensor onnxruntime got here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # OpenCV writes BGR arrays as RGB PNGs.
    if not cv2.imwrite(str(path), canvas[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"{path}: OpenCV could not write the PNG")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if back is None or back.shape != canvas.shape or back.dtype != np.uint8:
        got = None if back is None else (back.shape, back.dtype)
        raise SystemExit(f"{path}: read back {got}, expected {canvas.shape} uint8")
    if not np.array_equal(back[:, :, ::-1], canvas):
        raise SystemExit(f"{path}: PNG does not read back identical")


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def decode(output: np.ndarray) -> np.ndarray:
    """[4+nc, N] → rows [x1, y1, x2, y2, score, class] in input pixels after class-wise NMS."""
    boxes, scores = output[:4].T, output[4:].T
    score = scores.max(axis=1)
    cls = scores.argmax(axis=1)
    keep = score >= SCORE_THRESHOLD
    boxes, score, cls = boxes[keep], score[keep], cls[keep]
    corners = np.stack(
        [
            boxes[:, 0] - boxes[:, 2] / 2,
            boxes[:, 1] - boxes[:, 3] / 2,
            boxes[:, 0] + boxes[:, 2] / 2,
            boxes[:, 1] + boxes[:, 3] / 2,
        ],
        axis=1,
    )
    # Stable sort so equal scores keep anchor order, as the Rust side does.
    order = np.argsort(-score, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for i, idx in enumerate(order):
        if suppressed[i]:
            continue
        kept.append(idx)
        if len(kept) == MAX_DETECTIONS:
            break
        rest = order[i + 1 :]
        same = cls[rest] == cls[idx]
        ious = iou_one_to_many(corners[idx], corners[rest])
        suppressed[i + 1 :] |= same & (ious > NMS_IOU)
    kept_arr = np.array(kept, dtype=np.int64)
    return np.concatenate(
        [corners[kept_arr], score[kept_arr, None], cls[kept_arr, None].astype(np.float32)], axis=1
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--media", type=Path, default=ROOT / "media")
    ap.add_argument("--out", type=Path, required=True, help="JSON; the PNGs go to its folder's inputs/")
    args = ap.parse_args()

    if ort.__version__ != "1.32.0":
        print(f"onnxruntime {ort.__version__}, the daemon uses 1.32.0: run scripts/setup", file=sys.stderr)
        return 1

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Same level as the Rust Detector (ort's Level3); the INT8 QDQ graph is fused differently at level 1.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
    session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    inputs_dir = args.out.parent / INPUTS_DIR
    images = []
    for path in sorted(args.media.glob("*.jpg")):
        # 3-channel BGR like Ultralytics' imread, except that an EXIF orientation tag is ignored:
        # helmetd's decoder ignores it too, and the comparison needs the same pixels. (No bundled
        # photo is tagged other than upright, so for them this is exactly what yolo predict sees.)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise SystemExit(f"{path}: OpenCV cannot decode it")
        canvas, r, left, top, content_w, content_h = letterbox(bgr)
        png = inputs_dir / f"{path.stem}.png"
        write_input_png(canvas, png)
        (output,) = session.run(None, {input_name: to_nchw(canvas)})
        dets = decode(output[0])
        h, w = bgr.shape[:2]
        rows = []
        for x1, y1, x2, y2, score, cls in dets:
            # Undo the letterbox in float64, as the Rust Letterbox::to_original does.
            rows.append(
                [
                    round(float(np.clip((float(x1) - left) / r, 0, w)), 3),
                    round(float(np.clip((float(y1) - top) / r, 0, h)), 3),
                    round(float(np.clip((float(x2) - left) / r, 0, w)), 3),
                    round(float(np.clip((float(y2) - top) / r, 0, h)), 3),
                    # The shortest decimal that reads back as the same float32: exact scores.
                    float(str(np.float32(score))),
                    int(cls),
                ]
            )
        images.append(
            {
                "file": path.name,
                "sha256": sha256(path),
                "width": w,
                "height": h,
                "input_png": f"{INPUTS_DIR}/{png.name}",
                "input_png_sha256": sha256(png),
                "content": [left, top, content_w, content_h],
                "detections": rows,
            }
        )
        print(f"{path.name}: {w}x{h}, {len(rows)} boxes, {png.stat().st_size} bytes of PNG", file=sys.stderr)
    stale = {p.name for p in inputs_dir.glob("*.png")} - {Path(i["input_png"]).name for i in images}
    for name in sorted(stale):
        (inputs_dir / name).unlink()
        print(f"removed stale {inputs_dir / name}", file=sys.stderr)

    fixture = {
        "generator": "scripts/make_reference_detections.py",
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "resize": "cv2.resize INTER_LINEAR (Ultralytics LetterBox), JPEG decoded by cv2.imread",
        "model": args.model.name,
        "model_sha256": sha256(args.model),
        "input": [INPUT_W, INPUT_H],
        "score_threshold": SCORE_THRESHOLD,
        "nms_iou": NMS_IOU,
        "box_format": "[x1, y1, x2, y2, score, class] in original-image pixels",
        "input_format": "input_png: the exact model input, RGB 640x384 8-bit, pad 114; "
        "content: [left, top, width, height] of the resized image inside it",
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, indent=1)
    # One box or pair per line keeps the fixture's diffs readable.
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
