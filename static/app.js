// The page: one panel per stream, each speaking fastrtc's protocol through rtc.js.
import { connect, describeState, listMedia, postInput, readError, uploadVideo } from "./rtc.js";
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

/** Start/stop wiring shared by the panels: button, status line, cleanup on any ending.
 * `startLabel` may be a function (the label depends on other controls); `canStart()` may veto a
 * click; `onStarted(session)` runs once the session is up. Returns {session, start, stop, setStatus}. */
function panel({ button, status, startLabel, start, canStart, onStarted, onStopped, stats, statsKind = "video" }) {
  const setStatus = statusSetter(status);
  const label = () => (typeof startLabel === "function" ? startLabel() : startLabel);
  let session = null;
  let media = null;
  let strip = null;
  let starting = null;
  const stop = () => {
    strip?.stop();
    strip = null;
    session?.close();
    media?.getTracks().forEach((t) => t.stop());
    session = media = null;
    $(button).textContent = label();
    $(button).classList.remove("stop");
    $(button).disabled = false;
    onStopped?.();
    if (!$(status).classList.contains("error")) setStatus("Not connected.");
  };
  const connectNow = async () => {
    $(button).disabled = true;
    setStatus("Connecting…");
    try {
      const result = await start({ setStatus, stop, setMedia: (m) => { media = m; } });
      session = result;
      strip = startStats(result.pc, $(stats), statsKind);
      $(button).textContent = "Stop";
      $(button).classList.add("stop");
      onStarted?.(result);
    } catch (err) {
      setStatus(err.message, "error");
      stop();
    }
    $(button).disabled = false;
  };
  // one start at a time: a second request while connecting waits for the first
  const run = () => (starting ??= connectNow().finally(() => { starting = null; }));
  $(button).addEventListener("click", () => {
    if (session) stop();
    else if (!starting && (canStart?.() ?? true)) run();
  });
  window.addEventListener("pagehide", stop);
  return { get session() { return session; }, setStatus, start: run, stop, relabel: () => { if (!session) $(button).textContent = label(); } };
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

// ---- Camera or a server-side source (upload, URL, media file): /video ----
const cameraParams = () => ({ filter: $("filter").value, detect: $("detect").checked, conf_threshold: Number($("threshold").value) });
const sourceKind = () => $("video-source").value; // camera | upload | url | file
const sourceReady = () => ({
  camera: true, upload: $("video-file").files.length > 0, url: Boolean($("video-url").value.trim()),
  file: Boolean($("video-media").value),
})[sourceKind()];
const playParams = () => ({ fps: $("source-fps").value ? Number($("source-fps").value) : null, loop: $("source-loop").checked });
/** A status line that is hidden while it has nothing to say. */
const shownStatus = (id) => { const set = statusSetter(id); return (text, kind) => { $(id).hidden = !text; set(text, kind); }; };
const setUploadStatus = shownStatus("upload-status");
const setSourceStatus = shownStatus("source-status");
let sourceLimits = null; // GET /video/media: {files, urls, uploads, upload_max_bytes}
let uploadAbort = null;
let uploadName = null;

const camera = panel({
  button: "connect", status: "status", stats: "camera-rtc",
  startLabel: () => (sourceKind() === "camera" ? "Start camera" : "Play"),
  canStart: () => { // nothing chosen yet: open the file chooser, or go to the URL field
    if (sourceReady()) return true;
    if (sourceKind() === "upload") $("video-file").click();
    else if (sourceKind() === "url") $("video-url").focus();
    return false;
  },
  onStarted: (session) => { refreshMedia(session.id); if (!session.sendsCamera) playSource(session); },
  onStopped: () => {
    uploadAbort?.abort();
    $("local").srcObject = null;
    $("remote").srcObject = null;
    setSourceStatus("");
  },
  async start(ctx) {
    const handlers = {
      onTrack: (ev) => { $("remote").srcObject = ev.streams[0] ?? new MediaStream([ev.track]); },
      onReport: (r) => (r.type === "source" ? showSourceReport(r) : showCameraReport(r)),
    };
    let session;
    if (sourceKind() === "camera") {
      session = await sendingSession("/video", { video: { width: 640, height: 480 }, audio: false }, "camera", ctx, {
        onMedia: (media) => { $("local").srcObject = media; }, ...handlers,
      });
    } else { // the server plays a source: receive only, no camera asked for
      session = await connect("/video", {
        setup: (pc) => pc.addTransceiver("video", { direction: "recvonly" }),
        onMessage: (msg) => handleServerMessage(msg, ctx.setStatus, ctx.stop),
        onState: onStateChange(ctx.setStatus, ctx.stop), ...handlers,
      });
    }
    session.sendsCamera = sourceKind() === "camera";
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

const megabytes = (n) => `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} MB`;
const describeVideo = (v) => [`${v.width}×${v.height}`, v.codec, v.fps ? `${v.fps} fps` : null,
  v.duration_s ? `${v.duration_s.toFixed(1)} s` : "live"].filter(Boolean).join(", ");

function showSourceReport(r) {
  const name = r.source === "upload" && uploadName ? uploadName : r.source;
  if (r.state === "playing") setSourceStatus(`Playing ${name}: ${describeVideo(r)}.`, "live");
  else if (r.state === "ended") setSourceStatus(`${name} ended after ${r.frames} frames.`);
  else if (r.state === "error") setSourceStatus(`The source ${name} failed: ${r.message}`, "error");
}

function showUploadProgress(fraction) {
  const percent = Math.round(fraction * 100);
  $("upload").hidden = false;
  $("upload-progress").value = percent;
  $("upload-percent").textContent = `${percent}%`;
}

/** Send the chosen file to the session; the server answers with what it found, or why not. */
async function uploadChosenFile(session) {
  const file = $("video-file").files[0];
  if (!file) return;
  const max = sourceLimits?.upload_max_bytes;
  if (max && file.size > max) {
    setUploadStatus(`${file.name} is ${megabytes(file.size)}; this server takes at most ${megabytes(max)}.`, "error");
    return;
  }
  uploadAbort?.abort();
  const abort = (uploadAbort = new AbortController());
  showUploadProgress(0);
  uploadName = file.name; // the server may report "playing" before its answer to the upload arrives
  setUploadStatus(`Uploading ${file.name} (${megabytes(file.size)})…`);
  const result = await uploadVideo("/video", session.id, file, {
    signal: abort.signal, onProgress: showUploadProgress,
    onSent: () => setUploadStatus(`Sent ${file.name}; the server is checking it…`),
  });
  if (uploadAbort === abort) uploadAbort = null;
  if (result.aborted) { setUploadStatus(""); $("upload").hidden = true; return; }
  if (!result.ok) { setUploadStatus(`Upload refused: ${result.message}`, "error"); return; }
  uploadName = result.body.upload.name || file.name;
  session.uploaded = file;
  setUploadStatus(`Uploaded ${uploadName} (${megabytes(result.body.upload.bytes)}, ${describeVideo(result.body.upload)}).`, "live");
  if (!session.sendsCamera) await sendPlayParams(session.id);
}

async function sendPlayParams(id, extra = {}) {
  const resp = await postInput("/video", id, { ...playParams(), ...extra });
  if (!resp.ok) setSourceStatus(`Not applied: ${await readError(resp)}`, "error");
  return resp.ok;
}

/** Play what the picker says on this (receive-only) session. */
async function playSource(session) {
  const kind = sourceKind();
  if (kind === "upload") { // the session keeps its upload: going back to it needs no second one
    const file = $("video-file").files[0];
    session.playing = null;
    return file && session.uploaded === file ? sendPlayParams(session.id, { source: "upload" }) : uploadChosenFile(session);
  }
  if (kind === "camera") return;
  uploadAbort?.abort(); // an upload still going would switch the session back to it when done
  const target = kind === "url" ? { source: "url", url: $("video-url").value.trim() } : { source: "file", file: $("video-media").value };
  const key = JSON.stringify(target);
  if (!(target.url || target.file) || session.playing === key) return; // e.g. a second change event
  setSourceStatus(`Opening ${target.url ?? target.file}…`);
  if (await sendPlayParams(session.id, target)) session.playing = key;
}

/** The picker changed: a camera session cannot play a server source quietly (and the reverse
 * needs the camera), so the session restarts as the other kind when it must. */
async function useSource() {
  const wantsCamera = sourceKind() === "camera";
  if (camera.session && camera.session.sendsCamera !== wantsCamera) camera.stop();
  if (camera.session) await playSource(camera.session);
  else await camera.start(); // onStarted plays the source
}

function showSourceFields() {
  const kind = sourceKind();
  $("video-file").hidden = kind !== "upload";
  $("upload").hidden = kind !== "upload" || !$("video-file").files.length;
  $("upload-status").hidden = kind !== "upload" || !$("upload-status").textContent;
  $("video-url").hidden = kind !== "url";
  $("video-media").hidden = kind !== "file";
  $("source-controls").hidden = kind === "camera";
  $("local-figure").hidden = kind !== "camera";
  $("camera-videos").classList.toggle("single", kind !== "camera");
  camera.relabel();
}

/** Which sources this server offers; options it does not offer are hidden. */
async function refreshMedia(id) {
  const media = await listMedia("/video", id).catch(() => null);
  if (!media) return;
  sourceLimits = media;
  const options = Object.fromEntries([...$("video-source").options].map((o) => [o.value, o]));
  options.upload.hidden = !media.uploads;
  options.url.hidden = !media.urls;
  options.file.hidden = !media.files.length;
  const chosen = $("video-media").value;
  $("video-media").replaceChildren(...media.files.map((f) => new Option(`${f.name} (${megabytes(f.bytes)})`, f.name)));
  if (media.files.some((f) => f.name === chosen)) $("video-media").value = chosen;
  $("source-picker").hidden = !(media.uploads || media.urls || media.files.length);
  if (options[sourceKind()].hidden) { $("video-source").value = "camera"; showSourceFields(); }
}

$("video-source").addEventListener("change", () => {
  showSourceFields();
  if (camera.session && sourceReady()) useSource();
});
$("video-file").addEventListener("change", () => { if ($("video-file").files.length) useSource(); });
$("video-url").addEventListener("change", () => { if ($("video-url").value.trim()) useSource(); });
$("video-media").addEventListener("change", () => useSource());
showSourceFields(); // a reload may have kept the last choice
for (const id of ["source-fps", "source-loop"]) {
  $(id).addEventListener("change", () => { if (camera.session && !camera.session.sendsCamera) sendPlayParams(camera.session.id); });
}
$("source-seek-go").addEventListener("click", () => {
  if (camera.session && !camera.session.sendsCamera) sendPlayParams(camera.session.id, { seek: Number($("source-seek").value) || 0 });
});

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
  if ("video" in streams) refreshMedia(null);
}).catch(() => { /* the panels stay; their own requests will say what is wrong */ });
