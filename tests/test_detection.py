"""The detector: real photos through the embedded NanoDet, YOLO decoders through small ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import skimage
from onnx import TensorProto, helper, numpy_helper

from server.config import DEFAULT_MODEL
from streams.detection import Detector, draw_detections, recognise_format

PHOTOS = Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def nanodet() -> Detector:
    return Detector(DEFAULT_MODEL, use_gpu=False)


@pytest.mark.parametrize(
    ("photo", "label", "min_score"),
    [
        ("astronaut.png", "person", 0.6),
        ("motorcycle_left.png", "motorcycle", 0.6),
        ("coffee.png", "cup", 0.4),
    ],
)
def test_embedded_nanodet_finds_objects_in_real_photos(nanodet, photo, label, min_score):
    img = cv2.imread(str(PHOTOS / photo))
    found = nanodet.detect(img, conf_threshold=0.3)
    best = max((d for d in found if d.label == label), key=lambda d: d.score, default=None)
    assert best is not None, [d.as_dict() for d in found]
    assert best.score >= min_score
    x1, y1, x2, y2 = best.box
    h, w = img.shape[:2]
    assert (x2 - x1) * (y2 - y1) > 0.2 * w * h, "the main object should fill much of these photos"
    assert found[0].label == label, "the photo's subject should be the top detection"


def test_embedded_nanodet_is_recognised_and_quiet_on_noise(nanodet):
    assert nanodet.format == "nanodet" and nanodet.input_size == (416, 416)
    assert nanodet.class_names[0] == "person" and len(nanodet.class_names) == 80
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    assert [d for d in nanodet.detect(noise, 0.35)] == []


def constant_model(path: Path, output: np.ndarray, size: int = 64, names: str | None = None) -> Path:
    """An ONNX graph `images[1,3,size,size] -> output` that emits `output` whatever the image."""
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(output.astype(np.float32)))
    mean = helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0)
    zero = helper.make_node("Mul", ["m", "z"], ["mz"])
    add = helper.make_node("Add", ["c", "mz"], ["output0"])
    graph = helper.make_graph(
        [const, mean, zero, add],
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if names is not None:
        helper.set_model_props(model, {"names": names})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_yolov8_export_is_decoded_with_nms_and_letterbox(tmp_path):
    n = 100  # real exports have thousands of candidates: N > 4 + nc tells the layout
    out = np.zeros((1, 84, n), np.float32)
    # two overlapping boxes of class 2 (NMS keeps the better), one box of class 0, the rest below threshold
    for i, (cx, cy, w, h, cls, score) in enumerate(
        [(32, 32, 20, 20, 2, 0.9), (33, 32, 20, 20, 2, 0.8), (10, 50, 8, 8, 0, 0.6), (5, 5, 4, 4, 1, 0.1)]
    ):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    det = Detector(constant_model(tmp_path / "v8.onnx", out), use_gpu=False)
    assert det.format == "yolov8" and det.input_size == (64, 64)
    frame = np.zeros((128, 128, 3), np.uint8)  # letterbox scale 0.5, no padding
    found = det.detect(frame, conf_threshold=0.25)
    assert [(d.label, round(d.score, 2)) for d in found] == [("car", 0.9), ("person", 0.6)]
    assert found[0].box == (44, 44, 84, 84)  # (32±10) * 2
    assert found[1].box == (12, 92, 28, 108)


def test_yolov8_transposed_output_and_custom_names(tmp_path):
    out = np.zeros((1, 20, 7), np.float32)  # [1, N, 4+nc] with nc=3
    out[0, 3] = (16, 16, 8, 8, 0.1, 0.7, 0.2)
    names = "{0: 'cat', 1: 'hat', 2: 'bat'}"
    det = Detector(constant_model(tmp_path / "t.onnx", out, size=32, names=names), use_gpu=False)
    assert det.format == "yolov8" and det.class_names == ("cat", "hat", "bat")
    found = det.detect(np.zeros((32, 32, 3), np.uint8), 0.5)
    assert [(d.label, d.box) for d in found] == [("hat", (12, 12, 20, 20))]


def test_yolov10_export_is_decoded_without_nms(tmp_path):
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 30, 40, 0.95, 16)  # dog
    out[0, 1] = (11, 21, 31, 41, 0.90, 16)  # overlapping, kept: the model is NMS-free
    out[0, 2] = (0, 0, 5, 5, 0.2, 3)
    det = Detector(constant_model(tmp_path / "v10.onnx", out), use_gpu=False)
    assert det.format == "yolov10"
    frame = np.zeros((64, 128, 3), np.uint8)  # letterbox: scale 0.5, 16 px of padding on top
    found = det.detect(frame, 0.5)
    assert [(d.label, d.box) for d in found] == [("dog", (20, 8, 60, 48)), ("dog", (22, 10, 62, 50))]


def test_unknown_model_layouts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unrecognised detector outputs"):
        Detector(constant_model(tmp_path / "x.onnx", np.zeros((1, 10), np.float32)), use_gpu=False)
    with pytest.raises(FileNotFoundError):
        Detector(tmp_path / "missing.onnx")
    assert recognise_format([(1, 2704, 80), (1, 2704, 44), (1, 676, 80), (1, 676, 44)]) == "nanodet"


def test_boxes_and_labels_are_drawn(nanodet):
    img = cv2.imread(str(PHOTOS / "astronaut.png"))
    found = nanodet.detect(img, 0.5)
    drawn = draw_detections(img.copy(), found)
    assert not np.array_equal(drawn, img)


def test_embedded_model_is_the_documented_file():
    import hashlib

    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert digest == "7b1f16c61230fa798a9bdb525a4a7026ecf1813f6df4c4aa986c499fdbb8314a"
