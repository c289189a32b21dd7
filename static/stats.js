// The live stats strip under each panel: what the browser itself measures (pc.getStats()) once a
// second — round-trip time, resolution, frame rate, bitrate — with a sparkline of the last minute.
const HISTORY = 60;

function sparkline(canvas, values, color) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const finite = values.filter(Number.isFinite);
  if (finite.length < 2) return;
  const max = Math.max(...finite) || 1;
  g.strokeStyle = color;
  g.lineWidth = 1.5;
  g.beginPath();
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) return;
    const x = (i / (HISTORY - 1)) * width;
    const y = height - 2 - (v / max) * (height - 4);
    i === 0 || !Number.isFinite(values[i - 1]) ? g.moveTo(x, y) : g.lineTo(x, y);
  });
  g.stroke();
}

function cell(strip, label) {
  const div = document.createElement("div");
  div.className = "rtc-stat";
  div.innerHTML = `<span class="label">${label}</span> <span class="value">–</span>`;
  strip.append(div);
  return div.querySelector(".value");
}

/**
 * Poll `pc.getStats()` every second into `strip` (an empty element). `kind` is the media whose
 * resolution and frame rate matter ("video" or "audio"); received media is shown when there is
 * some, else what we send. Returns {stop()}.
 */
export function startStats(pc, strip, kind = "video") {
  strip.replaceChildren();
  strip.hidden = false;
  const rtt = cell(strip, "RTT");
  const size = kind === "video" ? cell(strip, "Resolution") : null;
  const fps = kind === "video" ? cell(strip, "fps") : null;
  const rate = cell(strip, "Bitrate");
  rate.parentElement.title = "of the media received (or sent, when nothing comes back)";
  const canvas = Object.assign(document.createElement("canvas"), { width: 120, height: 28, className: "spark" });
  canvas.title = kind === "video" ? "round-trip time (blue) and frame rate (green), last minute" : "round-trip time, last minute";
  strip.append(canvas);
  const rtts = Array(HISTORY).fill(NaN);
  const rates = Array(HISTORY).fill(NaN);
  let last = null;

  const poll = async () => {
    if (pc.connectionState === "closed") return;
    const report = await pc.getStats();
    let pair = null, inbound = null, outbound = null;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      if (s.type === "inbound-rtp" && s.kind === kind) inbound = s;
      if (s.type === "outbound-rtp" && s.kind === kind) outbound = s;
    });
    const media = inbound?.bytesReceived ? inbound : outbound;
    const bytes = media === inbound ? inbound.bytesReceived : outbound?.bytesSent ?? 0;
    const now = performance.now();
    const kbps = last ? ((bytes - last.bytes) * 8) / (now - last.now) : NaN;
    last = { bytes, now };
    const ms = pair?.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : NaN;
    rtt.textContent = Number.isFinite(ms) ? `${ms.toFixed(0)} ms` : "–";
    if (size) size.textContent = media?.frameWidth ? `${media.frameWidth}×${media.frameHeight}` : "–";
    if (fps) fps.textContent = media?.framesPerSecond != null ? `${Math.round(media.framesPerSecond)}` : "–";
    rate.textContent = Number.isFinite(kbps) ? `${kbps.toFixed(0)} kbps` : "–";
    rtts.push(ms); rtts.shift();
    rates.push(kind === "video" ? media?.framesPerSecond ?? NaN : NaN); rates.shift();
    sparkline(canvas, rtts, "#2f6fed");
    if (kind === "video") {
      const overlay = Object.assign(document.createElement("canvas"), { width: canvas.width, height: canvas.height });
      sparkline(overlay, rates, "#2e7d32");
      canvas.getContext("2d").drawImage(overlay, 0, 0);
    }
  };
  const timer = setInterval(() => poll().catch(() => {}), 1000);
  return { stop: () => { clearInterval(timer); strip.hidden = true; } };
}
