"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()


class SessionCollector(Collector):
    """Reads live session counts at scrape time instead of tracking them by hand."""

    def __init__(self, counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("rt_sessions_active", "Active sessions", labels=["stream", "transport"])
        for stream, by_transport in self.counts().items():
            for transport, count in by_transport.items():
                gauge.add_metric([stream, transport], count)
        yield gauge


class Metrics:
    def __init__(self, session_counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(SessionCollector(session_counts))
        self.offers = Counter(
            "rt_offers", "WebRTC offers by outcome", ["stream", "outcome"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
