// The live stats strip under each panel: what the browser itself measures (pc.getStats()) once a
// second — round-trip time, resolution, frame rate, bitrate — with a sparkline of the last minute.
const HISTORY = 60;
const COLORS = { rtt: "#2f6fed", second: "#2e7d32" };

/**
 * One series, stretched over the samples collected so far (so the first seconds are readable, not a
 * few pixels at the edge), scaled 0..max with headroom so a steady value is a visible line.
 */
function plot(g, values, color, width, height) {
  const finite = values.filter(Number.isFinite);
  if (finite.length < 2) return;
  const top = Math.max(...finite) * 1.25 || 1;
  const step = width / (values.length - 1);
  g.strokeStyle = color;
  g.lineWidth = 1.5;
  g.beginPath();
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) return;
    const x = i * step;
    const y = height - 2 - (v / top) * (height - 4);
    i === 0 || !Number.isFinite(values[i - 1]) ? g.moveTo(x, y) : g.lineTo(x, y);
  });
  g.stroke();
}

function draw(canvas, series) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  g.fillStyle = "#8882";
  g.fillRect(0, height - 1, width, 1); // baseline: zero
  for (const [values, color] of series) plot(g, values, color, width, height);
}

function cell(strip, label, className = "") {
  const div = document.createElement("div");
  div.className = `rtc-stat ${className}`.trim();
  div.innerHTML = `<span class="label">${label}</span> <span class="value">–</span>`;
  strip.append(div);
  return div.querySelector(".value");
}

/** The entries that matter in one getStats() report. */
function pick(report, kind) {
  let pair = null, selectedId = null, inbound = null, outbound = null;
  const pairs = {};
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) selectedId = s.selectedCandidatePairId;
    if (s.type === "candidate-pair") {
      pairs[s.id] = s;
      if (s.nominated && s.state === "succeeded") pair = s;
    }
    if (s.type === "inbound-rtp" && s.kind === kind) inbound = s;
    if (s.type === "outbound-rtp" && s.kind === kind) outbound = s;
  });
  return { pair: pairs[selectedId] ?? pair, inbound, outbound };
}

/**
 * Poll `pc.getStats()` every second into `strip` (an empty element). `kind` is the media whose
 * resolution and frame rate matter ("video" or "audio"); received media is shown when there is
 * some, else what we send. The sparkline draws RTT (blue) and fps for video, or bitrate for audio
 * (green). Returns {stop()}.
 */
export function startStats(pc, strip, kind = "video") {
  strip.replaceChildren();
  strip.hidden = false;
  const video = kind === "video";
  const rtt = cell(strip, "RTT", "rtt");
  const size = video ? cell(strip, "Resolution") : null;
  const fps = video ? cell(strip, "fps", "second") : null;
  const rate = cell(strip, "Bitrate", video ? "" : "second");
  rate.parentElement.title = "of the media received (or sent, when nothing comes back)";
  const canvas = Object.assign(document.createElement("canvas"), { width: 120, height: 28, className: "spark" });
  canvas.title = `round-trip time (blue) and ${video ? "frame rate" : "bitrate"} (green), last minute`;
  strip.append(canvas);
  const rtts = [];
  const seconds = [];
  let last = null;

  const poll = async () => {
    if (pc.connectionState === "closed") return;
    const { pair, inbound, outbound } = pick(await pc.getStats(), kind);
    const media = inbound?.bytesReceived ? inbound : outbound;
    const bytes = media === inbound ? inbound.bytesReceived : outbound?.bytesSent;
    const now = performance.now();
    const kbps = last && bytes != null ? ((bytes - last.bytes) * 8) / (now - last.now) : NaN;
    last = bytes != null ? { bytes, now } : null;
    const ms = pair?.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : NaN;
    const frameRate = media?.framesPerSecond ?? NaN;
    rtt.textContent = Number.isFinite(ms) ? `${ms.toFixed(0)} ms` : "–";
    if (size) size.textContent = media?.frameWidth ? `${media.frameWidth}×${media.frameHeight}` : "–";
    if (fps) fps.textContent = Number.isFinite(frameRate) ? `${Math.round(frameRate)}` : "–";
    rate.textContent = Number.isFinite(kbps) ? `${kbps.toFixed(0)} kbps` : "–";
    rtts.push(ms);
    seconds.push(video ? frameRate : kbps);
    if (rtts.length > HISTORY) { rtts.shift(); seconds.shift(); }
    draw(canvas, [[rtts, COLORS.rtt], [seconds, COLORS.second]]);
  };
  const timer = setInterval(() => poll().catch((err) => console.debug("stats:", err)), 1000);
  return { stop: () => { clearInterval(timer); strip.hidden = true; } };
}
