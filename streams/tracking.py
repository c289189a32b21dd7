"""Boxes that keep up: detections carried forward to the current frame between detector runs.

The detector is slower than the camera, so its boxes describe an older frame than the one they are
drawn on and trail a moving object. The tracker moves each box with the image content inside it
(pyramidal Lucas-Kanade optical flow on a small grey copy of each frame: about a millisecond at
640x480). A detector result describes the frame the detector ran on (k), older than the current
frame (n) when it arrives: it is matched to the tracks as they were on frame k (IoU, same class, so
ids persist), carried from k to n by flow between those two frames directly, then frame to frame.
Where flow cannot reach (a fast new object, frames skipped under load) a coarse template search
gives it a start; where the image has nothing to follow, a box keeps its last velocity. Tracks the
detector stops confirming are dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from streams.detection import Detection

WORK_WIDTH = 320  # flow is computed at this width: half of 640x480, a quarter of the pixels
MIN_POINTS = 5  # fewer tracked points than this: flow has lost the box
_MAX_CORNERS = 32  # a median over 32 points is robust enough; LK cost grows with the count
_FB_MAX_ERROR = 1.0  # forward-backward disagreement (grey pixels) above which a point is dropped
_INLIER_PX = 2.0  # points moving this far (grey pixels) from the median move belong to something else
_MIN_MATCH = 0.5  # template-match correlation below which the coarse search has found nothing
_LK_PARAMS = {
    "winSize": (11, 11),
    "maxLevel": 3,  # 8x coarser at the top: moves of ~40 grey (80 frame) pixels without a guess
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03),
}


@dataclass(frozen=True)
class FlowFrame:
    """A frame as the tracker sees it: a small grey copy (flow is as good at half size, 4x cheaper)."""

    grey: np.ndarray
    width: int  # of the original frame, in whose pixels boxes are given
    height: int

    @property
    def scale(self) -> np.ndarray:
        """Grey pixels per frame pixel, as (sx, sy)."""
        return np.array([self.grey.shape[1] / self.width, self.grey.shape[0] / self.height])


def flow_frame(img: np.ndarray, work_width: int = WORK_WIDTH) -> FlowFrame:
    """The tracker's view of a BGR (or grey) frame."""
    h, w = img.shape[:2]
    if w > work_width:
        img = cv2.resize(img, (work_width, max(1, round(h * work_width / w))), interpolation=cv2.INTER_AREA)
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return FlowFrame(grey, w, h)


@dataclass(frozen=True)
class TrackedDetection:
    """A detection carried to the current frame: `age_frames` since the frame the detector saw."""

    label: str
    score: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the current frame's pixels
    track_id: int
    age_frames: int

    def detection(self) -> Detection:
        return Detection(self.label, self.score, self.box)

    def as_dict(self) -> dict[str, object]:
        return {**self.detection().as_dict(), "track_id": self.track_id, "age_frames": self.age_frames}


@dataclass(frozen=True)
class DetectorResult:
    """What the detector found on frame `frame_no`, with that frame as the tracker saw it (if it did)."""

    detections: Sequence[Detection]
    frame_no: int
    frame: FlowFrame | None


@dataclass(frozen=True)
class _Motion:
    """How the content of a box moved: about `centre` by `shift`, scaled by `ratio` (frame pixels)."""

    centre: np.ndarray
    shift: np.ndarray
    ratio: float

    def apply(self, box: np.ndarray) -> np.ndarray:
        c = _corners(self.centre)
        return c + _corners(self.shift) + self.ratio * (box - c)


@dataclass
class _Track:
    track_id: int
    label: str
    score: float
    box: np.ndarray  # float x1, y1, x2, y2 on the tracker's current frame; may leave the frame
    detected_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # frame pixels per frame
    missed_runs: int = 0
    history: dict[int, np.ndarray] = field(default_factory=dict)  # frame number -> box on that frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _corners(xy: np.ndarray) -> np.ndarray:
    """An (x, y) pair as (x, y, x, y), to apply to both corners of a box."""
    return np.concatenate((xy, xy))


def _shift_box(box: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return box + _corners(shift)


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def _features(grey: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Corners inside the box's inner 80% (its rim is often background), in grey pixels."""
    w, h = box[2] - box[0], box[3] - box[1]
    x1 = int(max(0, box[0] + 0.1 * w))
    y1 = int(max(0, box[1] + 0.1 * h))
    x2 = int(min(grey.shape[1], box[2] - 0.1 * w))
    y2 = int(min(grey.shape[0], box[3] - 0.1 * h))
    if x2 - x1 < 6 or y2 - y1 < 6:
        return np.zeros((0, 2), np.float32)
    pts = cv2.goodFeaturesToTrack(
        grey[y1:y2, x1:x2], maxCorners=_MAX_CORNERS, qualityLevel=0.01, minDistance=3, blockSize=5
    )
    if pts is None:
        return np.zeros((0, 2), np.float32)
    return pts.reshape(-1, 2) + np.array([x1, y1], np.float32)


def _median(a: np.ndarray) -> np.ndarray:
    """Median along axis 0: np.median's overhead is ten times the work on a few dozen points."""
    s = np.sort(a, axis=0)
    n = len(s)
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def _fit(p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Median move and median change of spread of matched points (grey pixels), or None if too few."""
    d = p1 - p0
    dev = d - _median(d)
    keep = (dev * dev).sum(axis=1) <= _INLIER_PX**2
    if keep.sum() < MIN_POINTS:
        return None
    p0, p1 = p0[keep], p1[keep]
    c0 = _median(p0)
    shift = _median(p1 - p0)
    r0 = np.hypot(*(p0 - c0).T)
    r1 = np.hypot(*(p1 - c0 - shift).T)
    usable = r0 > 4.0
    ratio = 1.0
    if usable.sum() >= 2 * MIN_POINTS:
        ratio = float(np.clip(_median(r1[usable] / r0[usable]), 0.8, 1.25))
    return c0, shift, ratio


def estimate_motion(
    prev: FlowFrame, cur: FlowFrame, boxes: Sequence[np.ndarray], guesses: Sequence[np.ndarray]
) -> list[_Motion | None]:
    """Per box (frame pixels on `prev`): how its content moved to `cur`, or None where too few
    points tracked. `guesses` (frame pixels) start the search: it need not be close, only helps."""
    scale = prev.scale
    per_box = [_features(prev.grey, np.asarray(b, float) * _corners(scale)) for b in boxes]
    counts = [len(p) for p in per_box]
    if sum(counts) == 0:
        return [None] * len(boxes)
    p0 = np.concatenate(per_box).astype(np.float32)
    guess = np.repeat(np.asarray(guesses, float).reshape(-1, 2) * scale, counts, axis=0).astype(np.float32)
    flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev.grey, cur.grey, p0, p0 + guess, flags=flags, **_LK_PARAMS)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur.grey, prev.grey, p1, p0.copy(), flags=flags, **_LK_PARAMS)
    fb = back - p0
    good = (st1.ravel() == 1) & (st2.ravel() == 1) & ((fb * fb).sum(axis=1) < _FB_MAX_ERROR**2)
    motions: list[_Motion | None] = []
    start = 0
    for n in counts:
        sel = slice(start, start + n)
        start += n
        ok = good[sel]
        fit = _fit(p0[sel][ok], p1[sel][ok]) if ok.sum() >= MIN_POINTS else None
        if fit is None:
            motions.append(None)
            continue
        centre, shift, ratio = fit
        motions.append(_Motion(centre / scale, shift / scale, ratio))
    return motions


def coarse_shift(prev: FlowFrame, cur: FlowFrame, box: np.ndarray, reach: float) -> np.ndarray | None:
    """Where the box's content went (frame pixels), by template matching at a quarter of the work
    size within `reach`: LK alone loses moves of more than ~80 px (a fast object, a slow detector),
    and a new object has no track to say where it went. None if no clear match."""
    g0, g1 = cv2.pyrDown(prev.grey), cv2.pyrDown(cur.grey)
    f = np.array([g0.shape[1] / prev.width, g0.shape[0] / prev.height])
    w, h = (box[2:] - box[:2]) * f
    x1, y1 = (box[:2] * f + 0.1 * np.array([w, h])).astype(int)
    x2, y2 = (box[2:] * f - 0.1 * np.array([w, h])).astype(int)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, g0.shape[1]), min(y2, g0.shape[0])
    if x2 - x1 < 6 or y2 - y1 < 6:
        return None
    r = int(np.ceil(reach * f.max()))
    sx1, sy1 = max(0, x1 - r), max(0, y1 - r)
    sx2, sy2 = min(g1.shape[1], x2 + r), min(g1.shape[0], y2 + r)
    if sx2 - sx1 <= x2 - x1 or sy2 - sy1 <= y2 - y1:
        return None
    template = g0[y1:y2, x1:x2]
    if template.std() < 4.0:  # flat: it would match anywhere
        return None
    scores = cv2.matchTemplate(g1[sy1:sy2, sx1:sx2], template, cv2.TM_CCOEFF_NORMED)
    _, best, _, (bx, by) = cv2.minMaxLoc(scores)
    if not np.isfinite(best) or best < _MIN_MATCH:
        return None
    return np.array([bx + sx1 - x1, by + sy1 - y1], float) / f


class BoxTracker:
    """One session's tracks. Not thread-safe: call it from the frame path only (it is cheap there)."""

    def __init__(
        self,
        *,
        match_iou: float = 0.3,
        max_missed_runs: int = 2,
        max_age_frames: int = 300,
        history_frames: int = 120,
        max_speed: float = 40.0,
    ) -> None:
        self.match_iou = match_iou
        self.max_missed_runs = max_missed_runs  # detector runs without the object before its track goes
        self.max_age_frames = max_age_frames  # a safety net if results stop coming at all
        self.history_frames = history_frames  # how old a detector result may be and still match at its frame
        self.max_speed = max_speed  # frame pixels per frame: how far a new or lost object is searched for
        self._tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self._prev: FlowFrame | None = None
        self._frame_no = 0

    def reset(self) -> None:
        self._tracks = []
        self._prev = None

    def update(
        self, frame: FlowFrame, frame_no: int, result: DetectorResult | None = None
    ) -> list[TrackedDetection]:
        """Move the tracks to this frame, fold in a detector result if one arrived, return the tracks."""
        prev = self._prev
        if prev is not None and (prev.grey.shape != frame.grey.shape or prev.width != frame.width):
            self.reset()  # the resolution changed: old boxes mean nothing here
            prev = None
        if prev is not None and self._tracks:
            self._step(prev, frame, max(1, frame_no - self._frame_no))
        if result is not None:
            self._fold_in(result, frame, frame_no)
        self._prune(frame, frame_no)
        for t in self._tracks:
            t.history[frame_no] = t.box.copy()
            while len(t.history) > 1 and (oldest := next(iter(t.history))) <= frame_no - self.history_frames:
                del t.history[oldest]
        self._prev, self._frame_no = frame, frame_no
        return self.tracked()

    def tracked(self) -> list[TrackedDetection]:
        """The tracks on the current frame, boxes clipped to it, best score first."""
        if self._prev is None:
            return []
        w, h = self._prev.width, self._prev.height
        out = []
        for t in sorted(self._tracks, key=lambda t: -t.score):
            x1, y1, x2, y2 = t.box
            box = (
                round(float(np.clip(x1, 0, w - 1))), round(float(np.clip(y1, 0, h - 1))),
                round(float(np.clip(x2, 0, w - 1))), round(float(np.clip(y2, 0, h - 1))),
            )  # fmt: skip
            out.append(TrackedDetection(t.label, t.score, box, t.track_id, self._frame_no - t.detected_frame))
        return out

    def _step(self, prev: FlowFrame, cur: FlowFrame, elapsed: int) -> None:
        """Frame to frame: each box moves with its content. Where flow loses it (a skipped stretch of
        frames, a bounce) it is looked for coarsely, and failing that moves at its last velocity."""
        guesses = [t.velocity * elapsed for t in self._tracks]
        motions = estimate_motion(prev, cur, [t.box for t in self._tracks], guesses)
        lost = [i for i, m in enumerate(motions) if m is None]
        if lost:
            for i in lost:
                found = coarse_shift(prev, cur, self._tracks[i].box, self.max_speed * elapsed)
                guesses[i] = found if found is not None else guesses[i]
            again = estimate_motion(
                prev, cur, [self._tracks[i].box for i in lost], [guesses[i] for i in lost]
            )
            for i, m in zip(lost, again, strict=True):
                motions[i] = m
        for t, motion, guess in zip(self._tracks, motions, guesses, strict=True):
            new = motion.apply(t.box) if motion is not None else _shift_box(t.box, guess)
            if motion is not None:
                t.velocity = 0.5 * t.velocity + 0.5 * (_centre(new) - _centre(t.box)) / elapsed
            t.box = new

    def _match(self, pairs: list[tuple[float, int, int]], match: dict[int, int], taken: set[int]) -> None:
        """Greedy, best overlap first: (IoU, detection, track) pairs into `match` (detection -> track)."""
        for overlap, i, j in sorted(pairs, reverse=True):
            if overlap < self.match_iou:
                break
            if i not in match and j not in taken:
                match[i] = j
                taken.add(j)

    def _fold_in(self, result: DetectorResult, cur: FlowFrame, frame_no: int) -> None:
        """Match a result to the tracks as they were on its frame, carry it to this frame, and match
        what is left on this frame (a track that drifted off its object at frame k)."""
        k = result.frame_no
        elapsed = frame_no - k
        dets = list(result.detections)
        boxes = [np.asarray(d.box, float) for d in dets]
        refs = [t.history.get(k, t.box) for t in self._tracks]
        match: dict[int, int] = {}
        taken: set[int] = set()
        self._match(
            [
                (iou(b, ref), i, j)
                for i, (d, b) in enumerate(zip(dets, boxes, strict=True))
                for j, (t, ref) in enumerate(zip(self._tracks, refs, strict=True))
                if t.label == d.label
            ],
            match,
            taken,
        )
        src = result.frame
        if elapsed <= 0 or src is None or src.grey.shape != cur.grey.shape or src.width != cur.width:
            src = None  # nothing to carry across, or no frame k to carry from
        # a matched track already knows how its object moved from k to now: the flow starts there;
        # a new object is first looked for coarsely
        guesses = []
        for i, box in enumerate(boxes):
            if i in match:
                guesses.append(_centre(self._tracks[match[i]].box) - _centre(refs[match[i]]))
                continue
            found = coarse_shift(src, cur, box, self.max_speed * elapsed) if src is not None else None
            guesses.append(found if found is not None else np.zeros(2))
        motions = estimate_motion(src, cur, boxes, guesses) if src is not None else [None] * len(boxes)
        carried = [
            m.apply(box) if m is not None else _shift_box(box, g)
            for box, m, g in zip(boxes, motions, guesses, strict=True)
        ]
        self._match(
            [
                (iou(carried[i], t.box), i, j)
                for i, d in enumerate(dets)
                if i not in match
                for j, t in enumerate(self._tracks)
                if j not in taken and t.label == d.label
            ],
            match,
            taken,
        )
        old = len(self._tracks)
        for i, det in enumerate(dets):
            motion = motions[i]
            velocity = motion.shift / elapsed if motion is not None and elapsed > 0 else None
            if i in match:
                t = self._tracks[match[i]]
                t.box, t.score, t.detected_frame, t.missed_runs = carried[i], det.score, k, 0
                if velocity is not None:
                    t.velocity = 0.5 * t.velocity + 0.5 * velocity
            else:
                v = velocity if velocity is not None else np.zeros(2)
                self._tracks.append(_Track(next(self._ids), det.label, det.score, carried[i], k, v))
        for j, t in enumerate(self._tracks[:old]):
            if j not in taken:
                t.missed_runs += 1
        self._tracks = [t for t in self._tracks if t.missed_runs < self.max_missed_runs]

    def _prune(self, frame: FlowFrame, frame_no: int) -> None:
        """Drop tracks gone stale or mostly out of the frame."""
        keep = []
        for t in self._tracks:
            x1, y1, x2, y2 = t.box
            area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            vw = min(x2, frame.width) - max(x1, 0.0)
            vh = min(y2, frame.height) - max(y1, 0.0)
            visible = max(0.0, vw) * max(0.0, vh)
            if frame_no - t.detected_frame <= self.max_age_frames and area > 0 and visible >= 0.2 * area:
                keep.append(t)
        self._tracks = keep
