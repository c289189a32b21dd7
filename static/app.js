// The page: one panel per stream, each speaking fastrtc's protocol through rtc.js.
import { connect, describeState, postInput, readError } from "./rtc.js";
import { startStats } from "./stats.js";

const $ = (id) => document.getElementById(id);

function statusSetter(id) {
  return (text, kind = "") => { const el = $(id); el.textContent = text; el.className = `status ${kind}`; };
}

function handleServerMessage(msg, setStatus, stop) {
  if (msg.type === "error") setStatus(`Server error: ${msg.message ?? msg.data}`, "error");
  else if (msg.type === "warning") setStatus(`Warning: ${msg.message ?? msg.data}`);
  else if (msg.type === "end_stream") {
    stop(); // first: closing the peer ourselves must not overwrite the reason with "Disconnected."
    setStatus(`The server ended the session: ${msg.data ?? msg.reason ?? "no reason given"}`, "error");
  }
}

/** Start/stop wiring shared by the panels: button, status line, cleanup on any ending. */
function panel({ button, status, startLabel, start, onStopped, stats, statsKind = "video" }) {
  const setStatus = statusSetter(status);
  let session = null;
  let media = null;
  let strip = null;
  const stop = () => {
    strip?.stop();
    strip = null;
    session?.close();
    media?.getTracks().forEach((t) => t.stop());
    session = media = null;
    $(button).textContent = startLabel;
    $(button).classList.remove("stop");
    $(button).disabled = false;
    onStopped?.();
    if (!$(status).classList.contains("error")) setStatus("Not connected.");
  };
  const run = async () => {
    $(button).disabled = true;
    setStatus("Connecting…");
    try {
      const result = await start({ setStatus, stop, setMedia: (m) => { media = m; } });
      session = result;
      strip = startStats(result.pc, $(stats), statsKind);
      $(button).textContent = "Stop";
      $(button).classList.add("stop");
    } catch (err) {
      setStatus(err.message, "error");
      stop();
    }
    $(button).disabled = false;
  };
  $(button).addEventListener("click", () => (session ? stop() : run()));
  window.addEventListener("pagehide", stop);
  return { get session() { return session; }, setStatus, stop };
}

function onStateChange(setStatus, stop) {
  return (state) => {
    const [text, kind] = describeState(state);
    setStatus(text, kind);
    if (["failed", "closed", "disconnected"].includes(state)) stop();
  };
}

/** A session that sends the user's camera or microphone: ask for the device, then connect. */
async function sendingSession(stream, constraints, device, { setStatus, stop, setMedia }, { onMedia, onTrack, onReport }) {
  setStatus(`Asking for the ${device}…`);
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    throw new Error(`No ${device}: ${err.message}`);
  }
  setMedia(media);
  onMedia?.(media);
  setStatus("Connecting…");
  return connect(stream, {
    setup: (pc) => media.getTracks().forEach((t) => pc.addTrack(t, media)),
    onTrack,
    onMessage: (msg) => handleServerMessage(msg, setStatus, stop),
    onState: onStateChange(setStatus, stop),
    onReport,
  });
}

// ---- Camera: /video ----
const cameraParams = () => ({ filter: $("filter").value, detect: $("detect").checked, conf_threshold: Number($("threshold").value) });

const camera = panel({
  button: "connect", status: "status", startLabel: "Start camera", stats: "camera-rtc",
  onStopped: () => { $("local").srcObject = null; $("remote").srcObject = null; },
  async start(ctx) {
    const session = await sendingSession("/video", { video: { width: 640, height: 480 }, audio: false }, "camera", ctx, {
      onMedia: (media) => { $("local").srcObject = media; },
      onTrack: (ev) => { $("remote").srcObject = ev.streams[0] ?? new MediaStream([ev.track]); },
      onReport: showCameraReport,
    });
    await sendCameraParams(session.id, ctx.setStatus);
    return session;
  },
});

async function sendCameraParams(id, setStatus) {
  const resp = await postInput("/video", id, cameraParams());
  if (!resp.ok) setStatus(`Settings not applied: ${await readError(resp)}`, "error");
}

function showCameraReport(report) {
  $("stat-fps").textContent = report.fps.toFixed(1);
  $("stat-proc").textContent = `${report.processing_ms.toFixed(1)} ms`;
  $("stat-det").textContent = report.params.detect ? `${report.detection_ms.toFixed(0)} ms` : "off";
  $("detections").replaceChildren(...report.detections.map((d) => {
    const li = document.createElement("li");
    li.textContent = `${d.label} ${(d.score * 100).toFixed(0)}%`;
    return li;
  }));
}

for (const id of ["filter", "detect", "threshold"]) {
  $(id).addEventListener("change", () => { if (camera.session) sendCameraParams(camera.session.id, camera.setStatus); });
}
$("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(2); });

// ---- Generated video: /generate ----
const generateParams = () => ({ fps: Number($("gen-fps").value), source: $("gen-source").value });

const generated = panel({
  button: "gen-connect", status: "gen-status", startLabel: "Start", stats: "gen-rtc",
  onStopped: () => { $("gen-video").srcObject = null; },
  async start({ setStatus, stop }) {
    const session = await connect("/generate", {
      setup: (pc) => pc.addTransceiver("video", { direction: "recvonly" }),
      onTrack: (ev) => { $("gen-video").srcObject = ev.streams[0] ?? new MediaStream([ev.track]); },
      onMessage: (msg) => handleServerMessage(msg, setStatus, stop),
      onState: onStateChange(setStatus, stop),
      onReport: (r) => { $("gen-stat-fps").textContent = `${r.fps.toFixed(1)} / ${r.target_fps}`; $("gen-stat-frames").textContent = r.frames; },
    });
    await sendGenerateParams(session.id, setStatus);
    return session;
  },
});

async function sendGenerateParams(id, setStatus) {
  const resp = await postInput("/generate", id, generateParams());
  if (!resp.ok) setStatus(`Settings not applied: ${await readError(resp)}`, "error");
}

for (const id of ["gen-fps", "gen-source"]) {
  $(id).addEventListener("change", () => { if (generated.session) sendGenerateParams(generated.session.id, generated.setStatus); });
}
$("gen-fps").addEventListener("input", () => { $("gen-fps-value").textContent = $("gen-fps").value; });

// ---- Voice chat: /chat ----
function chatLine(text, kind) {
  const li = document.createElement("li");
  li.textContent = text;
  li.className = kind;
  $("chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function setTurnState(state) {
  $("chat-state").textContent = state;
  $("chat-state").className = `turn-state ${state}`;
}

function showChatReport(r) {
  if (r.type === "state") setTurnState(r.state);
  else if (r.type === "transcript") chatLine(r.text || "(nothing heard)", "you");
  else if (r.type === "reply") chatLine(r.text, "server");
  else if (r.type === "turn") {
    const why = r.decision === "smart"
      ? `the end-of-turn model said finished (p ${r.turn_probability}, ${r.model_ms} ms) after ${r.pause_ms} ms of silence`
      : r.decision === "max_utterance" ? "the turn was too long" : `${r.silence_ms} ms of silence ends a turn`;
    chatLine(`reply audio ${r.pause_to_first_audio_ms} ms after the pause was detected (${why})`, "meta");
  }
  else if (r.type === "interrupted") chatLine("interrupted", "meta");
}

const chat = panel({
  button: "chat-connect", status: "chat-status", startLabel: "Start talking", stats: "chat-rtc", statsKind: "audio",
  onStopped: () => { $("chat-audio").srcObject = null; setTurnState("idle"); $("chat-state").textContent = "not connected"; },
  async start(ctx) {
    const constraints = { audio: { echoCancellation: true, noiseSuppression: true }, video: false };
    const session = await sendingSession("/chat", constraints, "microphone", ctx, {
      onTrack: (ev) => { $("chat-audio").srcObject = ev.streams[0] ?? new MediaStream([ev.track]); },
      onReport: showChatReport,
    });
    await sendChatParams(session.id, ctx.setStatus);
    return session;
  },
});

async function sendChatParams(id, setStatus) {
  const resp = await postInput("/chat", id, { mode: $("chat-mode").value });
  if (!resp.ok) setStatus(`Mode not changed: ${await readError(resp)}`, "error");
}

$("chat-mode").addEventListener("change", () => { if (chat.session) sendChatParams(chat.session.id, chat.setStatus); });

// Only the built-ins this server serves get a panel (BUILTIN_STREAMS may switch some off).
fetch("/healthz").then((r) => r.json()).then(({ streams }) => {
  for (const [panelId, stream] of [["camera", "video"], ["generate", "generate"], ["chat", "chat"]]) {
    if (!(stream in streams)) $(panelId).hidden = true;
  }
}).catch(() => { /* the panels stay; their own requests will say what is wrong */ });
