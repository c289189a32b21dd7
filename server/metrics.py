"""Prometheus metrics, one registry per app so several apps can live in one process (tests).

Counts that already exist somewhere (sessions, pending offers, tasks, threads) are read at scrape
time; events (frames, refusals, latencies) are recorded by a `StreamObserver` each stream calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.runtime import StreamObserver
from streams.stream import Stream

disable_created_metrics()

FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
STAGE_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
REPLY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class LiveCollector(Collector):
    """Gauges read from the streams and the process at scrape time instead of tracked by hand."""

    def __init__(self, streams: Callable[[], Mapping[str, Stream]]) -> None:
        self.streams = streams

    def collect(self) -> Iterable[GaugeMetricFamily]:
        streams = self.streams()
        active = GaugeMetricFamily("rt_sessions_active", "Active sessions", labels=["stream", "transport"])
        pending = GaugeMetricFamily(
            "rt_pending_offers", "Answered offers whose peer has not connected yet", labels=["stream"]
        )
        peers = GaugeMetricFamily("rt_peer_connections", "Open WebRTC peer connections", labels=["stream"])
        for name, stream in streams.items():
            for transport, count in stream.sessions_by_transport().items():
                active.add_metric([name, transport], count)
            pending.add_metric([name], stream.pending_offers)
            peers.add_metric([name], stream.peer_connections)
        yield from (active, pending, peers)
        threads = GaugeMetricFamily(
            "rt_threads", "Live threads by pool (per-session pools must drain to zero)", labels=["pool"]
        )
        for pool, count in Counter_(_pool(t.name) for t in threading.enumerate()).items():
            threads.add_metric([pool], count)
        yield threads
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop
            return
        yield GaugeMetricFamily("rt_event_loop_tasks", "Tasks on the server's event loop", value=tasks)


def _pool(thread_name: str) -> str:
    """`video-<session>_0` -> `video`, `asyncio_3` -> `asyncio`, `Thread-7 (run)` -> `Thread`."""
    return thread_name.split("-", 1)[0].split("_", 1)[0].split(" ", 1)[0]


class Metrics:
    def __init__(self, streams: Callable[[], Mapping[str, Stream]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LiveCollector(streams))
        r = self.registry
        # The default registry's process, Python and GC collectors, on this app's own registry: a
        # private registry does not get them, and memory and CPU are what an operator looks at first.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.offers = Counter("rt_offers", "WebRTC offers by outcome", ["stream", "outcome"], registry=r)
        self.candidates = Counter(
            "rt_ice_candidates", "Trickled ICE candidates by outcome (applied, held, or a refusal code)",
            ["stream", "outcome"], registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "rt_refusals",
            "Sessions and requests refused (limits, rate, access), every transport",
            ["stream", "transport", "reason"],
            registry=r,
        )
        self.sessions_ended = Counter(
            "rt_sessions_ended", "Sessions ended, by why", ["stream", "transport", "reason"], registry=r
        )
        self.frames = Counter(
            "rt_frames", "Video frames by direction: in, out, dropped (stale)", ["stream", "direction"],
            registry=r,
        )  # fmt: skip
        self.processing = Histogram(
            "rt_frame_processing_seconds", "Handler time per frame", ["stream"], buckets=FRAME_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.server_latency = Histogram(
            "rt_frame_server_latency_seconds",
            "Frame received (decoded) to processed frame handed to the encoder, waiting included",
            ["stream"],
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.pause_to_reply = Histogram(
            "rt_pause_to_reply_seconds", "End of the user's turn to the first reply audio", ["stream"],
            buckets=REPLY_BUCKETS, registry=r,
        )  # fmt: skip
        self.turn_stages = Histogram(
            "rt_turn_stage_seconds",
            "Each stage of a voice turn: pause (end of speech to end of turn), model (end-of-turn "
            "model), stt, first_sentence (responder), tts (first sentence), first_audio (end of "
            "speech to first reply audio)",
            ["stream", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.handler_errors = Counter("rt_handler_errors", "Handler exceptions", ["stream"], registry=r)
        self.recording_bytes = Counter(
            "rt_recording_bytes", "Bytes of session recordings written (RECORD)", ["stream"], registry=r
        )
        self.recording_dropped = Counter(
            "rt_recording_dropped_frames",
            "Frames a session's recording could not keep up with, dropped (the session never waits)",
            ["stream"],
            registry=r,
        )

    def observer(self, stream: str) -> StreamObserver:
        return _PrometheusObserver(self, stream)

    def count_refusal(self, stream: str, transport: str, reason: str) -> None:
        self.refusals.labels(stream, transport, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# stage label -> the key of the `turn` report (streams.handlers) that times it
TURN_STAGES = {
    "pause": "pause_ms",
    "model": "model_ms",
    "stt": "stt_ms",
    "first_sentence": "first_sentence_ms",
    "tts": "tts_ms",
    "first_audio": "speech_end_to_first_audio_ms",
}


class _PrometheusObserver(StreamObserver):
    """One stream's hooks, with its labels bound once (children are cheap to call per frame)."""

    def __init__(self, metrics: Metrics, stream: str) -> None:
        self.metrics = metrics
        self.stream = stream
        self._in = metrics.frames.labels(stream, "in")
        self._out = metrics.frames.labels(stream, "out")
        self._dropped = metrics.frames.labels(stream, "dropped")
        self._processing = metrics.processing.labels(stream)
        self._latency = metrics.server_latency.labels(stream)
        self._errors = metrics.handler_errors.labels(stream)
        self._recorded = metrics.recording_bytes.labels(stream)
        self._record_dropped = metrics.recording_dropped.labels(stream)

    def frame_received(self) -> None:
        self._in.inc()

    def frame_dropped(self) -> None:
        self._dropped.inc()

    def frame_sent(self, processing_s: float, latency_s: float | None) -> None:
        self._out.inc()
        self._processing.observe(processing_s)
        if latency_s is not None:
            self._latency.observe(latency_s)

    def handler_error(self) -> None:
        self._errors.inc()

    def report(self, report: dict[str, Any]) -> None:
        kind = report.get("type")
        if kind == "turn":
            if isinstance(report.get("pause_to_first_audio_ms"), int | float):
                self.metrics.pause_to_reply.labels(self.stream).observe(
                    report["pause_to_first_audio_ms"] / 1000
                )
            for stage, key in TURN_STAGES.items():
                ms = report.get(key)
                if isinstance(ms, int | float) and not isinstance(ms, bool):
                    self.metrics.turn_stages.labels(self.stream, stage).observe(ms / 1000)
        elif kind == "error":
            self._errors.inc()

    def session_ended(self, transport: str, reason: str) -> None:
        self.metrics.sessions_ended.labels(self.stream, transport, reason).inc()

    def session_refused(self, transport: str, reason: str) -> None:
        self.metrics.count_refusal(self.stream, transport, reason)

    def recording_written(self, n_bytes: int) -> None:
        self._recorded.inc(n_bytes)

    def recording_dropped(self) -> None:
        self._record_dropped.inc()
