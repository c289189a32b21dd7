// The camera panel: speaks fastrtc's WebRTC protocol to /video (see README, "Client protocol").
const $ = (id) => document.getElementById(id);
const STREAM = "/video";
let session = null;

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

// Refusals come back as {status: "failed", meta: {error}, message}: show the message as it is.
async function readError(resp) {
  try {
    const body = await resp.json();
    return body.message || body.meta?.error || `HTTP ${resp.status}`;
  } catch {
    return `HTTP ${resp.status}`;
  }
}

function waitForIceGathering(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have rather than hang
  });
}

function currentParams() {
  return { filter: $("filter").value, detect: $("detect").checked, conf_threshold: Number($("threshold").value) };
}

async function sendParams() {
  if (!session) return;
  const resp = await fetch(`${STREAM}/input`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ webrtc_id: session.id, ...currentParams() }),
  });
  if (!resp.ok) setStatus(`Settings not applied: ${await readError(resp)}`, "error");
}

function showReport(report) {
  $("stat-fps").textContent = report.fps.toFixed(1);
  $("stat-proc").textContent = `${report.processing_ms.toFixed(1)} ms`;
  $("stat-det").textContent = report.params.detect ? `${report.detection_ms.toFixed(0)} ms` : "off";
  const list = $("detections");
  list.replaceChildren(...report.detections.map((d) => {
    const li = document.createElement("li");
    li.textContent = `${d.label} ${(d.score * 100).toFixed(0)}%`;
    return li;
  }));
}

function onServerMessage(event) {
  let msg;
  try { msg = JSON.parse(event.data); } catch { return; }
  if (msg.type === "error") setStatus(`Server error: ${msg.message ?? msg.data}`, "error");
  else if (msg.type === "warning") setStatus(`Warning: ${msg.message ?? msg.data}`);
  else if (msg.type === "end_stream") { setStatus(`The server ended the stream: ${msg.data ?? ""}`); stop(); }
  else if (msg.type === "send_input") sendParams();
}

async function start() {
  $("connect").disabled = true;
  setStatus("Asking for the camera…");
  const id = crypto.randomUUID();
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    setStatus(`No camera: ${err.message}`, "error");
    $("connect").disabled = false;
    return;
  }
  $("local").srcObject = media;
  const config = await (await fetch("/api/rtc-config")).json();
  const pc = new RTCPeerConnection(config);
  session = { id, pc, media, events: null };
  const channel = pc.createDataChannel("text"); // must exist before the offer, or no media flows
  channel.onmessage = onServerMessage;
  media.getTracks().forEach((t) => pc.addTrack(t, media));
  pc.ontrack = (ev) => { $("remote").srcObject = ev.streams[0] ?? new MediaStream([ev.track]); };
  pc.onconnectionstatechange = () => {
    const state = pc.connectionState;
    if (state === "connected") setStatus("Connected.", "live");
    else if (state === "failed") { setStatus("The connection failed (network or firewall; a TURN server may be needed).", "error"); stop(); }
    else if (state === "disconnected" || state === "closed") { if (session?.pc === pc) { setStatus("Disconnected."); stop(); } }
  };
  setStatus("Connecting…");
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const resp = await fetch(`${STREAM}/webrtc/offer`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", webrtc_id: id }),
  });
  if (!resp.ok) {
    setStatus(`The server refused the connection: ${await readError(resp)}`, "error");
    stop();
    return;
  }
  await pc.setRemoteDescription(await resp.json());
  await sendParams();
  const events = new EventSource(`${STREAM}/outputs?webrtc_id=${encodeURIComponent(id)}`);
  events.onmessage = (ev) => showReport(JSON.parse(ev.data));
  events.addEventListener("end", () => events.close());
  session.events = events;
  $("connect").textContent = "Stop";
  $("connect").classList.add("stop");
  $("connect").disabled = false;
}

function stop() {
  if (!session) return;
  const { pc, media, events } = session;
  session = null;
  events?.close();
  media.getTracks().forEach((t) => t.stop());
  pc.close();
  $("local").srcObject = null;
  $("remote").srcObject = null;
  $("connect").textContent = "Start camera";
  $("connect").classList.remove("stop");
  $("connect").disabled = false;
  if (!$("status").classList.contains("error")) setStatus("Not connected.");
}

$("connect").addEventListener("click", () => (session ? stop() : start().catch((err) => { setStatus(`Could not connect: ${err.message}`, "error"); stop(); })));
for (const id of ["filter", "detect", "threshold"]) $(id).addEventListener("change", sendParams);
$("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(2); });
window.addEventListener("pagehide", stop);
