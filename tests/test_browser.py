"""The page in a real headless Chromium with a fake camera: the webcam comes back processed."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (make test installs it)"
)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
]  # fmt: skip

# Mean |R-G| + |G-B| over a sample of the remote video's pixels: near 0 for a gray picture.
CHANNEL_SPREAD = """() => {
  const v = document.getElementById('remote'); const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight; const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { s += Math.abs(d[i] - d[i + 1]) + Math.abs(d[i + 1] - d[i + 2]); n++; }
  return s / n;
}"""


@asynccontextmanager
async def chromium_page(
    url: str, errors: list[str], extra_args: list[str] | None = None, viewport: dict[str, int] | None = None
):
    """A fresh headless Chromium on `url`, collecting console errors."""
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        async with async_playwright() as p:
            browser = await p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS + (extra_args or []),
                viewport=viewport or {"width": 1280, "height": 720},
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(url)
                yield page
            finally:
                await browser.close()


COUNT_FRAMES = """(id) => new Promise((resolve) => {
  const v = document.getElementById(id); let n = 0;
  const tick = () => { n++; v.requestVideoFrameCallback(tick); };
  v.requestVideoFrameCallback(tick); setTimeout(() => resolve(n), 3000);
})"""


async def test_page_connects_camera_and_filters_live(server):
    errors: list[str] = []
    async with chromium_page(server.base_url + "/", errors) as page:
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=20000)
        frames = await page.evaluate(COUNT_FRAMES, "remote")
        assert frames >= 30, f"only {frames} frames in 3 s (the fake camera sends 20 fps)"
        colourful = await page.evaluate(CHANNEL_SPREAD)
        await page.select_option("#filter", "gray")
        await page.check("#detect")
        await page.wait_for_function("document.getElementById('stat-fps').textContent !== '–'", timeout=10000)
        await page.wait_for_timeout(1500)
        gray = await page.evaluate(CHANNEL_SPREAD)
        assert colourful > 40, f"the fake camera should be colourful (spread {colourful:.1f})"
        assert gray < 15, f"the returned video is not gray (mean channel spread {gray:.1f})"
        await page.screenshot(path=str(ARTIFACTS / "camera-panel.png"))
        status = await page.text_content("#status")
        assert "Connected" in status, status
        await page.click("#connect")
        assert "Not connected" in await page.text_content("#status")
    assert errors == [], errors


@pytest.mark.serial
async def test_page_plays_generated_video_at_the_chosen_rate(server):
    errors: list[str] = []
    async with chromium_page(server.base_url + "/", errors) as page:
        await page.click("#gen-connect")
        await page.wait_for_function("document.getElementById('gen-video').videoWidth > 0", timeout=20000)
        assert await page.evaluate(COUNT_FRAMES, "gen-video") >= 60, "expected about 30 fps"
        await page.fill("#gen-fps", "10")
        await page.dispatch_event("#gen-fps", "change")
        await page.wait_for_timeout(2000)
        frames = await page.evaluate(COUNT_FRAMES, "gen-video")
        assert 21 <= frames <= 36, f"{frames} frames in 3 s at 10 fps (30 fps would be ~90)"
        await page.wait_for_function(
            "document.getElementById('gen-stat-fps').textContent.endsWith('/ 10')", timeout=5000
        )
        await page.screenshot(path=str(ARTIFACTS / "generate-panel.png"), full_page=True)
        await page.click("#gen-connect")
        assert "Not connected" in await page.text_content("#gen-status")
    assert errors == [], errors


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_page_voice_chat_echoes_the_microphone(server, tmp_path):
    """Chromium's fake microphone plays espeak speech (looped); the echo comes back through the page."""
    import numpy as np
    import soundfile as sf

    from tests.audio_client import speech

    clip = np.concatenate([np.zeros(24_000, np.float32), speech("Hello there, how are you today?"),
                           np.zeros(96_000, np.float32)])  # fmt: skip
    wav = tmp_path / "mic.wav"
    sf.write(wav, clip, 48_000, subtype="PCM_16")
    errors: list[str] = []
    async with chromium_page(
        server.base_url + "/", errors, [f"--use-file-for-fake-audio-capture={wav}"]
    ) as page:
        await page.click("#chat-connect")
        await page.wait_for_function(
            "document.getElementById('chat-state').textContent === 'speaking'", timeout=20000
        )
        await page.wait_for_function(
            "[...document.querySelectorAll('#chat-log li.meta')].some(li => li.textContent.includes('after the pause was detected'))",
            timeout=5000,
        )
        has_audio = await page.evaluate(
            "document.getElementById('chat-audio').srcObject.getAudioTracks().length"
        )
        assert has_audio == 1
        await page.screenshot(path=str(ARTIFACTS / "chat-panel.png"), full_page=True)
        await page.click("#chat-connect")
        assert "Not connected" in await page.text_content("#chat-status")
    assert errors == [], errors


@pytest.mark.serial
async def test_browser_keeps_sending_at_the_camera_resolution(server):
    """The answer carries a bitrate floor because Chrome was seen dropping to ~320x240 at 9 fps within
    ~15 s when sending to aiortc. On this loopback the drop did not reproduce in 25 s even without the
    floor, so this is a regression check of the sending quality, not proof of that fix."""
    errors: list[str] = []
    async with chromium_page(server.base_url + "/", errors) as page:
        await page.click("#connect")
        await page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=20000)
        samples = []
        for _ in range(6):  # 30 s
            await page.wait_for_timeout(5000)
            samples.append(
                await page.evaluate(
                    """async () => { const s = await window.rtcPeers['/video'].getStats(); let r = null;
                       s.forEach((x) => { if (x.type === 'outbound-rtp' && x.kind === 'video') r = x; });
                       return [r.frameWidth, r.frameHeight, r.framesPerSecond || 0, r.qualityLimitationReason]; }"""
                )
            )
        print(f"\nChromium outbound video every 5 s: {samples}")
        assert all(w == 640 and h == 480 for w, h, _, _ in samples[1:]), samples
        assert samples[-1][2] >= 15, samples
        await page.click("#connect")
    assert errors == [], errors


# How many pixel columns of the sparkline canvas have something drawn in them.
SPARKLINE_COLUMNS = """(sel) => {
  const c = document.querySelector(sel); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let x = 0; x < c.width; x++) {
    for (let y = 0; y < c.height - 1; y++) { if (d[(y * c.width + x) * 4 + 3] > 0) { n++; break; } }
  }
  return n;
}"""

STRIP_VALUES = """(id) => Object.fromEntries([...document.querySelectorAll(`#${id} .rtc-stat`)].map(
  (d) => [d.querySelector('.label').textContent, d.querySelector('.value').textContent]))"""


async def test_stats_strip_on_a_phone_sized_screen(server):
    """The strip shows the browser's own RTT, resolution, fps and bitrate, with a sparkline, and the
    page fits a 375 px wide screen without sideways scrolling."""
    errors: list[str] = []
    async with chromium_page(server.base_url + "/", errors, viewport={"width": 375, "height": 812}) as page:
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        await page.click("#connect")
        await page.wait_for_function(
            "document.querySelector('#camera-rtc .rtc-stat:nth-child(3) .value')?.textContent.match(/^[0-9]+$/)",
            timeout=20000,
        )
        await page.wait_for_timeout(4000)  # a few seconds of sparkline
        values = await page.evaluate(STRIP_VALUES, "camera-rtc")
        print(f"\nbrowser-side stats (camera panel): {values}")
        assert values["RTT"].endswith(" ms") and float(values["RTT"].split()[0]) < 100, values
        assert int(values["fps"]) >= 10, values
        assert values["Resolution"] == "640×480", values
        assert values["Bitrate"].endswith(" kbps") and float(values["Bitrate"].split()[0]) > 100, values
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        drawn = await page.evaluate(SPARKLINE_COLUMNS, "#camera-rtc canvas")
        assert drawn > 80, f"the sparkline covers only {drawn} of 120 columns"
        await page.locator("#camera").screenshot(path=str(ARTIFACTS / "camera-panel-phone.png"))
        await page.locator("#camera-rtc").screenshot(path=str(ARTIFACTS / "stats-strip.png"))
        await page.click("#connect")
        assert await page.is_hidden("#camera-rtc")
    assert not errors, errors
