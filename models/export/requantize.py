#!/usr/bin/env python3
"""Re-quantize the little model's weights to 7 bits so its scores do not depend on the CPU.

Why: the little model (helmet_yolov12m_384x640_int8qdq.onnx as first exported) is QDQ INT8 with
u8 activations and s8 weights over the full range [-127, 127]. onnxruntime runs such Convs with
the U8S8 kernels, and on x86-64 without VNNI these use VPMADDUBSW, which adds two u8·s8 products
into a saturating int16: 2 · 255 · 127 = 64770 does not fit, so an AVX2 gateway and an AVX-512 VNNI
gateway computed different scores for the same photo (up to 0.34 apart; issue #22). With weights in
[-64, 64] ("reduce_range") the largest pair sum is 2 · 255 · 64 = 32640 < 32767: no kernel
saturates, and every CPU computes the same integers.

How (needs only the two shipped models, no PyTorch): the QDQ graph and its activation scales
(calibrated on fp32 activations, so independent of how weights are quantized) are kept; each Conv
weight is quantized again from the fp32 weight of the same name in the big model (same checkpoint,
only the input size differs), per output channel, symmetric, scale = max|w| / 64, values clipped
to [-64, 64], as onnxruntime.quantization does with reduce_range=True; each Conv bias (int32,
scale = input scale · weight scale) follows its weight's new scale.

Stages:
    fp32       OUT/helmet_yolov12m_384x640_fp32.onnx: the QDQ graph with every Q/DQ removed and the
               fp32 weights put back (the float model the INT8 one approximates)
    requant    OUT/helmet_yolov12m_384x640_int8qdq.onnx from SRC (the full-range INT8 model)
    detect M   run model M on the photos and sampled video frames; write detections (conf >= 0.001)
               to RESULTS/<tag>.npz; run it natively and under `qemu-x86_64 -cpu Haswell` to get the
               AVX2 kernels on a VNNI machine (`cpuid` stage shows what the CPU reports)
    cpuid      print the x86 features onnxruntime's MLAS chooses kernels by
    compare    agreement tables between the .npz files given, and mAP50 against the big model

Usage (a venv with onnxruntime==1.32.0 onnx numpy opencv-python-headless):
    python requantize.py fp32 requant
    python requantize.py detect OUT/helmet_yolov12m_384x640_int8qdq.onnx rr_native
    qemu-x86_64 -cpu Haswell $(which python) requantize.py detect ... rr_haswell
    python requantize.py compare rr_native rr_haswell ...
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = Path(os.environ.get("SRC", ROOT / "../shared/models/helmet_yolov12m_384x640_int8qdq.onnx"))
BIG = Path(os.environ.get("BIG", ROOT / "models/helmet_yolov12m_640_fp32.onnx"))
OUT = Path(os.environ.get("OUT", "/tmp/requant"))
RESULTS = OUT / "results"
MEDIA = Path(os.environ.get("MEDIA", ROOT / "media"))
VIDEO = MEDIA / "helmet-test.mp4"
VIDEO_EVERY = 12  # every 12th frame of the test video (it repeats a few photos for seconds)
REDUCED_QMAX = 64

RR_OUT = OUT / "helmet_yolov12m_384x640_int8qdq.onnx"
FP32_OUT = OUT / "helmet_yolov12m_384x640_fp32.onnx"


def initializers(model):
    return {i.name: i for i in model.graph.initializer}


def weight_dequantizers(model):
    """(weight DQ, bias DQ, input DQ) per Conv whose weight is an int8 initializer."""
    inits = initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        w_dq = producer.get(conv.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue
        b_dq = producer.get(conv.input[2]) if len(conv.input) > 2 else None
        yield conv, w_dq, b_dq, producer.get(conv.input[0])


def fp32_weight_name(w_dq):
    return w_dq.output[0].removesuffix("_DequantizeLinear_Output")


def stage_requant():
    q = onnx.load(str(SRC))
    big = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(BIG)).graph.initializer}
    inits = initializers(q)
    worst_pair = 0
    n = 0
    for conv, w_dq, b_dq, _ in weight_dequantizers(q):
        w = big[fp32_weight_name(w_dq)].astype(np.float32)
        old_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
        absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(absmax > 0, absmax / REDUCED_QMAX, 1.0).astype(np.float32)
        shape = (-1,) + (1,) * (w.ndim - 1)
        qw = np.clip(np.rint(w / scale.reshape(shape)), -REDUCED_QMAX, REDUCED_QMAX).astype(np.int8)
        worst_pair = max(worst_pair, int(np.abs(qw).max()) * 255 * 2)
        inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(qw, w_dq.input[0]))
        inits[w_dq.input[1]].CopyFrom(numpy_helper.from_array(scale, w_dq.input[1]))
        if b_dq is not None and b_dq.op_type == "DequantizeLinear":
            b = big[b_dq.output[0]].astype(np.float64)
            old_b_scale = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64)
            b_scale = (old_b_scale * (scale / old_scale)).astype(np.float32)
            qb = np.rint(b / b_scale.astype(np.float64)).astype(np.int32)
            inits[b_dq.input[0]].CopyFrom(numpy_helper.from_array(qb, b_dq.input[0]))
            inits[b_dq.input[1]].CopyFrom(numpy_helper.from_array(b_scale, b_dq.input[1]))
        n += 1
    q.doc_string = ("helmet YOLOv12m 384x640, static QDQ INT8, weights reduce_range (7-bit) re-quantized "
                    "from the fp32 checkpoint weights by models/export/requantize.py")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(q)
    onnx.save(q, str(RR_OUT))
    print(f"{RR_OUT}: {n} Conv weights re-quantized to [-{REDUCED_QMAX}, {REDUCED_QMAX}]; "
          f"largest u8*s8 pair sum {worst_pair} (int16 max 32767)")


def stage_fp32():
    """The float model behind the INT8 graph: fp32 weights back in, every Q/DQ pair removed."""
    q = onnx.load(str(SRC))
    big = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(BIG)).graph.initializer}
    inits = initializers(q)
    rename = {}
    drop = set()
    new_inits = []
    for node in q.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        drop.add(node.name)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.output[0]
            src = big.get(fp32_weight_name(node)) if name.endswith("_DequantizeLinear_Output") else big.get(name)
            if src is None:  # a quantized constant that is no Conv weight: dequantize it here
                x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
                s = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
                z = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                src = (x - z) * s
            new_inits.append(numpy_helper.from_array(src.astype(np.float32), name))
        else:
            rename[node.output[0]] = node.input[0]

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    keep = [n for n in q.graph.node if n.name not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    for o in q.graph.output:
        assert resolve(o.name) == o.name, "graph output behind a Q/DQ pair"
    del q.graph.node[:]
    q.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    kept_inits = [i for i in q.graph.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del q.graph.initializer[:]
    q.graph.initializer.extend(kept_inits)
    onnx.checker.check_model(q)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(q, str(FP32_OUT))
    print(f"{FP32_OUT}: {len(keep)} nodes, {len(kept_inits)} initializers")


def media_inputs():
    """(name, BGR image) for every photo and every VIDEO_EVERY-th frame of the test video."""
    import cv2

    for p in sorted(MEDIA.glob("*.jpg")):
        yield p.name, cv2.imread(str(p))
    cap = cv2.VideoCapture(str(VIDEO))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % VIDEO_EVERY == 0:
            yield f"video#{i}", frame
        i += 1


def stage_detect(model, tag):
    sys.path.insert(0, str(HERE))
    import export  # letterbox, postprocess and mAP as the model's maker measured them

    sess = export.ort_session(Path(model), 1)
    size = export.in_hw(sess)
    dets = {}
    for name, img in media_inputs():
        x, r, pad = export.preprocess(img, size)
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        dets[name] = export.postprocess(out, r, pad, img.shape[:2], 0.001, 0.45)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(RESULTS / f"{tag}.npz", **dets)
    print(f"{tag}: {len(dets)} images")


def stage_cpuid():
    """Reads CPUID leaf 7 through a tiny C helper, so it reports what the (possibly emulated) CPU
    says to onnxruntime, not the host's /proc/cpuinfo."""
    import ctypes
    import mmap

    # mov eax,7; xor ecx,ecx; push rbx; cpuid; mov eax,ecx; shl rax,32; or rax,rbx; pop rbx; ret
    code = bytes.fromhex("b807000000" "31c9" "53" "0fa2" "89c8" "48c1e020" "4809d8" "5b" "c3")
    buf = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    leaf7 = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)()
    ebx, ecx = leaf7 & 0xFFFFFFFF, leaf7 >> 32
    print(json.dumps({"avx2": bool(ebx >> 5 & 1), "avx512f": bool(ebx >> 16 & 1),
                      "avx512bw": bool(ebx >> 30 & 1), "avx512_vnni": bool(ecx >> 11 & 1)}))


def stage_compare(*tags):
    sys.path.insert(0, str(HERE))
    import export

    loaded = {t: dict(np.load(RESULTS / f"{t}.npz")) for t in tags}
    rows = {}
    for a in tags:
        for b in tags:
            if a >= b:
                continue
            rows[f"{a} vs {b}"] = agreement(loaded[a], loaded[b], export)
    big_tag = next((t for t in tags if t.startswith("big")), None)
    if big_tag:
        gts = {k: v[v[:, 4] >= 0.5] for k, v in loaded[big_tag].items()}
        for t in tags:
            if t == big_tag:
                continue
            photos = {k: v for k, v in loaded[t].items() if not k.startswith("video#")}
            video = {k: v for k, v in loaded[t].items() if k.startswith("video#")}
            rows[f"{t} mAP50 vs {big_tag}"] = {
                "photos": export.map50(photos, {k: gts[k] for k in photos})[1],
                "video": export.map50(video, {k: gts[k] for k in video})[1],
                "all": export.map50(loaded[t], gts)[1],
            }
    print(json.dumps(rows, indent=1))


def agreement(a, b, export, thr=0.5):
    """Boxes >= thr of each side: same class, IoU >= 0.9, |Δscore| <= 0.05 with a partner."""
    ok = total = 0
    max_diff = 0.0
    for k in a:
        da, db = a[k][a[k][:, 4] >= thr], b[k][b[k][:, 4] >= thr - 0.1]
        for side, other in ((da, db), (b[k][b[k][:, 4] >= thr], a[k][a[k][:, 4] >= thr - 0.1])):
            for box in side:
                total += 1
                same = other[other[:, 5] == box[5]]
                if len(same) == 0:
                    continue
                ious = export.iou_matrix(box[None, :4], same[:, :4])[0]
                j = int(ious.argmax())
                diff = abs(float(same[j, 4] - box[4]))
                max_diff = max(max_diff, diff if ious[j] >= 0.9 else 1.0)
                ok += ious[j] >= 0.9 and diff <= 0.05
    return {"boxes_ge_0.5": total, "agree": int(ok), "max_abs_score_diff": round(max_diff, 4)}


if __name__ == "__main__":
    args = sys.argv[1:]
    stages = {"fp32": stage_fp32, "requant": stage_requant, "cpuid": stage_cpuid}
    if args[:1] == ["detect"]:
        stage_detect(*args[1:3])
    elif args[:1] == ["compare"]:
        stage_compare(*args[1:])
    else:
        for s in args:
            stages[s]()
