"""What an operator reads: `--help` lists every setting, `/metrics` has the process's memory and CPU,
`/healthz` names the onnxruntime providers the detector really runs on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.config import Settings
from server.settings_help import describe_settings, env_name

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def help_entries() -> dict[str, str]:
    """`python -m server --help`, as a user runs it, split into one text block per variable."""
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    entries: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if match := re.match(r"^    ([A-Z0-9_]+) \(", line):
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith(" " * 8):
            entries[current] += "\n" + line
        else:
            current = None
    assert "--host" in out and "--port" in out and "--streams" in out  # the options are still there
    return entries


def expected_default(name: str) -> str:
    """What a user should read as the default, worked out from the model, not from the help code."""
    field = Settings.model_fields[name]
    if name == "instance_id":
        return "random"
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if value is None:
        return "(none)"
    if value == []:
        return "(empty)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_help_lists_every_setting_with_its_default_and_description():
    entries = help_entries()
    assert set(entries) == {env_name(name) for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        entry = entries[env_name(name)]
        assert f"default: {expected_default(name)}" in entry, entry
        if field.description:
            assert " ".join(field.description.split()) in " ".join(entry.split()), entry
    assert "(int, >= 0, <= 65535)  default: 8000" in entries["PORT"]
    assert "(none|cloudflare|twilio)  default: none" in entries["TURN_PROVIDER"]
    assert entries["TURN_CREDENTIAL"].count("\n") == 0  # no description, still listed


def test_help_is_generated_from_the_settings_model_so_it_cannot_drift():
    class MoreSettings(Settings):
        # --- added later ---
        new_knob: int = 3
        described_knob: float | None = None

    text = describe_settings(MoreSettings)
    assert "  added later\n    NEW_KNOB (int)  default: 3\n" in text
    assert "DESCRIBED_KNOB (float or none)  default: (none)" in text


@pytest.fixture(scope="module")
def gpu_app() -> FastAPI:
    """An app whose detector asks for CUDA (the default), in this process."""
    return create_app(Settings(assistant_enabled=False, detector_use_gpu=True))


@pytest.fixture(scope="module")
def cpu_app() -> FastAPI:
    """A second app in the same process, asking for the CPU only the way an operator does."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTOR_USE_GPU", "false")
        return create_app(Settings(assistant_enabled=False))


def samples(app: FastAPI) -> dict[str, float]:
    text = TestClient(app).get("/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_metrics_include_process_memory_cpu_and_file_descriptors_in_every_app(gpu_app, cpu_app):
    for app in (gpu_app, cpu_app):  # one registry per app: several apps live in one process
        found = samples(app)
        assert found["process_resident_memory_bytes"] > 10_000_000
        assert found["process_cpu_seconds_total"] > 0
        assert found["process_open_fds"] > 0
    text = TestClient(gpu_app).get("/metrics").text
    assert "python_info{" in text and "python_gc_objects_collected_total" in text


def test_health_reports_the_providers_the_detector_session_uses(gpu_app):
    detector = TestClient(gpu_app).get("/healthz").json()["detector"]
    assert detector["providers"] == gpu_app.state.detector.session.get_providers()
    assert detector["providers_requested"] == [CUDA, CPU]


def test_health_with_gpu_off_shows_the_cpu_provider_alone(cpu_app):
    detector = TestClient(cpu_app).get("/healthz").json()["detector"]
    assert detector["providers"] == cpu_app.state.detector.session.get_providers() == [CPU]
    assert detector["providers_requested"] == [CPU]


DETECTOR_CASES = textwrap.dedent(
    """
    import json, logging, onnxruntime as ort
    from server.config import DEFAULT_MODEL
    from streams.detection import Detector

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logging.getLogger().addHandler(Keep(logging.WARNING))
    real = ort.get_available_providers
    results = {}
    for case, use_gpu, listed in [("cpu", False, False), ("gpu", True, False), ("listed", True, True)]:
        records = []
        # onnxruntime-gpu lists CUDA even when its libraries are missing: pretend it is listed.
        ort.get_available_providers = (lambda: ["CUDAExecutionProvider", *real()]) if listed else real
        detector = Detector(DEFAULT_MODEL, use_gpu=use_gpu)
        ort.get_available_providers = real
        results[case] = {
            "providers": detector.providers,
            "session": detector.session.get_providers(),
            "requested": detector.providers_requested,
            "warnings": [r.getMessage() for r in records if r.name == "streams.detection"],
        }
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def detector_cases() -> dict[str, dict[str, Any]]:
    """Detectors built where CUDA cannot run whatever the machine (no visible GPU), in a fresh process
    so CUDA_VISIBLE_DEVICES applies: CPU asked; GPU asked of a CPU build; GPU asked and listed."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", DETECTOR_CASES], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["gpu", "listed"])
def test_detector_asked_for_gpu_without_one_reports_cpu_and_warns_once(detector_cases, case):
    result = detector_cases[case]
    assert result["providers"] == result["session"] == [CPU]
    assert result["requested"] == [CUDA, CPU]
    (warning,) = result["warnings"]
    assert "CUDAExecutionProvider requested but not in use" in warning
    assert "fell back to CPUExecutionProvider" in warning


def test_detector_asked_for_cpu_runs_on_cpu_without_a_warning(detector_cases):
    result = detector_cases["cpu"]
    assert result["providers"] == result["session"] == result["requested"] == [CPU]
    assert result["warnings"] == []
