"""The page's source picker for /video in a real headless Chromium: a video file chosen in the page is
uploaded (receive-only session, no camera asked for) with a progress bar, comes back processed, with
the detector's findings listed; a file that is not a video shows the server's reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import ServerProcess
from tests.test_browser import ARTIFACTS, COUNT_FRAMES, chromium_page, pytestmark  # noqa: F401
from tests.test_video_sources import render_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page-sources")
    (root / "media").mkdir()
    notes = root / "notes.mp4"
    notes.write_bytes(b"these are notes, not a video " * 300)
    return {"clip": render_clip(root / "media" / "walk.mp4"), "notes": notes, "media": root / "media"}


@pytest.fixture(scope="module")
def source_page_server(clips: dict[str, Path]) -> Iterator[ServerProcess]:
    """Only /video (starts fast), with a media folder of one clip and no URL sources."""
    with ServerProcess(
        env={"BUILTIN_STREAMS": "video", "MEDIA_DIR": str(clips["media"])},
        log_name="page-sources-server",
    ) as proc:
        yield proc


async def test_page_uploads_a_chosen_file_and_plays_it_processed_with_detections(source_page_server, clips):
    errors: list[str] = []
    async with chromium_page(source_page_server.base_url + "/", errors) as page:
        await page.check("#detect")
        await page.select_option("#video-source", "upload")
        assert await page.is_visible("#video-file") and await page.is_hidden("#local-figure")
        assert (await page.text_content("#connect")) == "Play"
        await page.set_input_files("#video-file", str(clips["clip"]))
        await page.wait_for_function(
            "document.getElementById('upload-progress').value === 100", timeout=20000
        )
        assert (await page.text_content("#upload-percent")) == "100%"
        await page.wait_for_function(
            "document.getElementById('upload-status').textContent.startsWith('Uploaded walk.mp4')",
            timeout=20000,
        )
        assert "640×360" in await page.text_content("#upload-status")
        await page.wait_for_function("document.getElementById('remote').videoWidth === 640", timeout=20000)
        frames = await page.evaluate(COUNT_FRAMES, "remote")
        assert frames >= 10, f"only {frames} frames in 3 s of a 15 fps clip"
        await page.wait_for_function(
            "document.getElementById('source-status').textContent.startsWith('Playing walk.mp4')",
            timeout=10000,
        )
        await page.wait_for_function(
            "[...document.querySelectorAll('#detections li')].some((li) => li.textContent.startsWith('person'))",
            timeout=20000,
        )
        # no camera was asked for: the offer only receives
        senders = await page.evaluate("window.rtcPeers['/video'].getSenders().filter((s) => s.track).length")
        assert senders == 0
        assert "Connected" in await page.text_content("#status")
        await page.locator("#camera").screenshot(path=str(ARTIFACTS / "video-upload-panel.png"))
        await page.click("#connect")
        assert "Not connected" in await page.text_content("#status")
    assert errors == [], errors


async def test_page_shows_why_an_upload_was_refused_and_lists_the_media_folder(source_page_server, clips):
    errors: list[str] = []
    async with chromium_page(source_page_server.base_url + "/", errors) as page:
        await page.wait_for_function(
            "!document.querySelector('#video-source option[value=file]').hidden", timeout=10000
        )
        assert await page.evaluate("document.querySelector('#video-source option[value=url]').hidden")
        assert await page.evaluate(
            "[...document.getElementById('video-media').options].map((o) => o.value)"
        ) == ["walk.mp4"]
        await page.select_option("#video-source", "upload")
        await page.set_input_files("#video-file", str(clips["notes"]))
        await page.wait_for_function(
            "document.getElementById('upload-status').textContent.startsWith('Upload refused')", timeout=20000
        )
        message = await page.text_content("#upload-status")
        assert "not a video FFmpeg can decode" in message, message
        assert await page.get_attribute("#upload-status", "class") == "status error"
        assert "Connected" in await page.text_content("#status")  # the session itself is fine
        await page.locator("#camera").screenshot(path=str(ARTIFACTS / "video-upload-refused.png"))
    # the only console error is the browser's own note on the refused (415) request
    assert all("415" in e for e in errors), errors
