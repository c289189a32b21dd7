"""ONNX object detection: the embedded NanoDet-g model, or a user's YOLOv8/YOLO11/YOLOv10 export.

The model format is recognised from the model's outputs, so one setting (the model path) is enough.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

ModelFormat = Literal["nanodet", "yolov8", "yolov10"]

# NanoDet-g's normalisation (BGR order), from its training config.
_NANODET_MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)
_NANODET_STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
_NANODET_DIST_COLUMNS = (32, 44)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "score": round(self.score, 3), "box": list(self.box)}


def default_thread_count() -> int:
    """One thread on small machines: measured faster than two on 2 cores, where video work competes."""
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 2 else min(4, cpus // 2)


def requested_providers(use_gpu: bool) -> list[str]:
    """What the settings ask for, whether or not this onnxruntime can give it."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else ["CPUExecutionProvider"]


def choose_providers(use_gpu: bool) -> list[str]:
    """The requested providers this onnxruntime build has (others would only earn a UserWarning).
    Listed is not working: onnxruntime-gpu lists CUDA even when its libraries are missing."""
    available = ort.get_available_providers()
    return [p for p in requested_providers(use_gpu) if p in available]


def recognise_format(output_shapes: list[tuple[int, ...]]) -> ModelFormat:
    """Tell the model family from the (concrete) shapes of its outputs."""
    if len(output_shapes) >= 2 and len(output_shapes) % 2 == 0 and all(len(s) == 3 for s in output_shapes):
        counts = sorted({s[1] for s in output_shapes})
        if len(counts) * 2 == len(output_shapes):
            return "nanodet"
    if len(output_shapes) == 1 and len(output_shapes[0]) == 3:
        _, a, b = output_shapes[0]
        if b == 6 and a != 6:
            return "yolov10"
        if min(a, b) > 4:
            return "yolov8"
    raise ValueError(f"unrecognised detector outputs {output_shapes}: expected NanoDet, YOLOv8/11 or YOLOv10")


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping aspect ratio, pad with grey (114) to `size` (h, w) as YOLO was trained."""
    h, w = frame.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    nh, nw = round(h * scale), round(w * scale)
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out = np.full((th, tw, 3), 114, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out, scale, left, top


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware NMS (OpenCV); boxes are x1,y1,x2,y2."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.astype(float).tolist(), classes.astype(int).tolist(), 0.0, iou
    )
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def _split_nanodet_heads(pair: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(class scores, box distribution): the distribution has 4*(reg_max+1) columns, reg_max 7 or 10."""
    a, b = pair
    if a.shape[1] in _NANODET_DIST_COLUMNS and b.shape[1] not in _NANODET_DIST_COLUMNS:
        return b, a
    if b.shape[1] in _NANODET_DIST_COLUMNS and a.shape[1] not in _NANODET_DIST_COLUMNS:
        return a, b
    return (a, b) if a.shape[1] >= b.shape[1] else (b, a)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Detector:
    """A thread-safe wrapper around one onnxruntime session; `detect()` may be called from any thread."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 0,
        use_gpu: bool = True,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"detector model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_thread_count()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.providers_requested = requested_providers(use_gpu)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=choose_providers(use_gpu))
        # What the session runs on: onnxruntime silently falls back to CPU when CUDA cannot start.
        self.providers: list[str] = self.session.get_providers()
        self._warn_if_fallen_back(path)
        self.model_path = path
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        self.input_size = (h if isinstance(h, int) else 640, w if isinstance(w, int) else 640)
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Run once on zeros: warms the session up and gives concrete output shapes for recognition.
        t0 = time.perf_counter()
        dummy = np.zeros((1, 3, *self.input_size), dtype=np.float32)
        shapes = [tuple(o.shape) for o in self.session.run(None, {self.input_name: dummy})]
        self.warmup_ms = (time.perf_counter() - t0) * 1000
        self.format: ModelFormat = recognise_format(shapes)
        self.class_names = self._class_names(shapes)
        self._lock = threading.Lock() if "CUDAExecutionProvider" in self.providers else None
        logger.info(
            "detector loaded: %s format=%s input=%s providers=%s threads=%d classes=%d",
            path.name, self.format, self.input_size, self.providers, opts.intra_op_num_threads,
            len(self.class_names),
        )  # fmt: skip

    def _warn_if_fallen_back(self, path: Path) -> None:
        """Say once, at load, that a requested provider is not in use (else the GPU is silently idle)."""
        missing = [p for p in self.providers_requested if p not in self.providers]
        if not missing:
            return
        why = (
            "not in this onnxruntime build (install onnxruntime-gpu)"
            if not set(missing) & set(ort.get_available_providers())
            else "onnxruntime could not start it (CUDA/cuDNN libraries or a GPU missing?)"
        )
        logger.warning(
            "detector %s: %s requested but not in use, %s; fell back to %s "
            "(set DETECTOR_USE_GPU=false to ask for CPU only)",
            path.name, ", ".join(missing), why, ", ".join(self.providers),
        )  # fmt: skip

    def _class_names(self, shapes: list[tuple[int, ...]]) -> tuple[str, ...]:
        meta = self.session.get_modelmeta().custom_metadata_map
        if "names" in meta:  # Ultralytics exports carry "{0: 'person', ...}"
            try:
                names = ast.literal_eval(meta["names"])
                return tuple(str(names[i]) for i in sorted(names))
            except (ValueError, SyntaxError, TypeError, KeyError):
                logger.warning("ignoring unreadable class names in %s", self.model_path.name)
        if self.format == "nanodet":
            first = [np.empty(s[1:]) for s in shapes if s[1] == shapes[0][1]]
            nc = _split_nanodet_heads(first)[0].shape[1]
        elif self.format == "yolov8":
            nc = min(shapes[0][1:]) - 4
        else:
            nc = 80
        return COCO_CLASSES if nc == 80 else tuple(f"class {i}" for i in range(nc))

    def label(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class {class_id}"

    def detect(self, frame: np.ndarray, conf_threshold: float = 0.35) -> list[Detection]:
        """Detect objects in a BGR uint8 frame; boxes come back in that frame's pixels."""
        if self.format == "nanodet":
            return self._detect_nanodet(frame, conf_threshold)
        img, scale, left, top = letterbox(frame, self.input_size)
        blob = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        (out,) = self._run(blob)[:1]
        if self.format == "yolov8":
            boxes, scores, classes = self.decode_yolov8(out, conf_threshold, self.iou_threshold)
        else:
            boxes, scores, classes = self.decode_yolov10(out, conf_threshold)
        boxes = (boxes - np.array([left, top, left, top], dtype=np.float32)) / scale
        return self._to_detections(boxes, scores, classes, frame.shape)

    def _run(self, blob: np.ndarray) -> list[np.ndarray]:
        if self._lock is None:
            return self.session.run(None, {self.input_name: blob})
        with self._lock:
            return self.session.run(None, {self.input_name: blob})

    @staticmethod
    def decode_yolov8(
        out: np.ndarray, conf_threshold: float, iou_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`[1, 4+nc, N]` rows cx,cy,w,h,scores... (also accepts the transposed `[1, N, 4+nc]`)."""
        pred = out[0]
        if pred.shape[0] > pred.shape[1]:
            pred = pred.T
        cls_scores = pred[4:]
        classes = cls_scores.argmax(axis=0)
        scores = cls_scores[classes, np.arange(cls_scores.shape[1])]
        mask = scores >= conf_threshold
        cx, cy, w, h = pred[0, mask], pred[1, mask], pred[2, mask], pred[3, mask]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        scores, classes = scores[mask], classes[mask]
        keep = nms(boxes, scores, classes, iou_threshold)
        return boxes[keep], scores[keep], classes[keep]

    @staticmethod
    def decode_yolov10(out: np.ndarray, conf_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`[1, 300, 6]` rows x1,y1,x2,y2,score,class, already NMS-free."""
        pred = out[0]
        mask = pred[:, 4] >= conf_threshold
        pred = pred[mask]
        return pred[:, :4].astype(np.float32), pred[:, 4], pred[:, 5].astype(np.int64)

    def _detect_nanodet(self, frame: np.ndarray, conf_threshold: float) -> list[Detection]:
        h, w = frame.shape[:2]
        ih, iw = self.input_size
        img = cv2.resize(frame, (iw, ih), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        blob = ((img - _NANODET_MEAN) / _NANODET_STD).transpose(2, 0, 1)[None]
        outputs = self._run(np.ascontiguousarray(blob))
        boxes, scores, classes = self.decode_nanodet(outputs, (ih, iw), conf_threshold, self.iou_threshold)
        boxes = boxes * np.array([w / iw, h / ih, w / iw, h / ih], dtype=np.float32)
        return self._to_detections(boxes, scores, classes, frame.shape)

    @staticmethod
    def decode_nanodet(
        outputs: list[np.ndarray], input_size: tuple[int, int], conf_threshold: float, iou_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per stride: sigmoid class scores `[1,N,nc]` and box distributions `[1,N,4*(reg_max+1)]`."""
        ih, iw = input_size
        by_count: dict[int, list[np.ndarray]] = {}
        for arr in outputs:
            by_count.setdefault(arr.shape[1], []).append(arr[0])
        all_boxes, all_scores, all_classes = [], [], []
        for count, pair in by_count.items():
            cls, dist = _split_nanodet_heads(pair)
            stride = int(round((ih * iw / count) ** 0.5))
            gw = iw // stride
            classes = cls.argmax(axis=1)
            scores = cls[np.arange(count), classes]
            idx = np.nonzero(scores >= conf_threshold)[0]
            if idx.size == 0:
                continue
            bins = dist.shape[1] // 4
            d = _softmax(dist[idx].reshape(-1, 4, bins), axis=2) @ np.arange(bins, dtype=np.float32)
            d *= stride
            cx = ((idx % gw) + 0.5) * stride
            cy = ((idx // gw) + 0.5) * stride
            all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1))
            all_scores.append(scores[idx])
            all_classes.append(classes[idx])
        if not all_boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        boxes = np.concatenate(all_boxes).astype(np.float32)
        scores = np.concatenate(all_scores)
        classes = np.concatenate(all_classes)
        keep = nms(boxes, scores, classes, iou_threshold)
        return boxes[keep], scores[keep], classes[keep]

    def _to_detections(
        self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, shape: tuple[int, ...]
    ) -> list[Detection]:
        h, w = shape[:2]
        order = np.argsort(-scores)[: self.max_detections]
        result = []
        for i in order:
            x1, y1, x2, y2 = boxes[i]
            box = (
                int(np.clip(x1, 0, w - 1)), int(np.clip(y1, 0, h - 1)),
                int(np.clip(x2, 0, w - 1)), int(np.clip(y2, 0, h - 1)),
            )  # fmt: skip
            result.append(Detection(self.label(int(classes[i])), float(scores[i]), box))
        return result


def _colour(label: str) -> tuple[int, int, int]:
    h = abs(hash(label)) % 180
    hsv = np.uint8([[[h, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(frame: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """Boxes with labels, drawn in place on a writable BGR frame."""
    for det in detections:
        x1, y1, x2, y2 = det.box
        colour = _colour(det.label)
        cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 2)
        text = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(y1, th + base + 2)
        cv2.rectangle(frame, (x1, ty - th - base - 2), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(
            frame, text, (x1 + 2, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    return frame
