// fastrtc's WebRTC protocol, shared by every panel (see README, "Client protocol").
import { accessToken, askForToken } from "./access.js";

const sessionTokens = new Map(); // webrtc_id -> session token (when the server requires one)

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Each request names its session in the query string too: a proxy in front of several server
// processes routes on it (docs/deploy.md).
function sessionUrl(path, id) {
  const token = sessionTokens.get(id);
  return `${path}?webrtc_id=${encodeURIComponent(id)}${token ? `&token=${encodeURIComponent(token)}` : ""}`;
}

/** A server-issued session id (it names the server process that will own the session). */
async function newSession() {
  const resp = await fetch("/api/session", { method: "POST", headers: authHeaders(accessToken()) });
  if (resp.status === 401) {
    const reason = await readError(resp);
    askForToken(reason);
    throw new Error(`This server needs an access token: enter it above, then try again. (${reason})`);
  }
  if (!resp.ok) throw new Error(`The server refused a new session: ${await readError(resp)}`);
  const session = await resp.json();
  if (session.token) sessionTokens.set(session.webrtc_id, session.token);
  return session.webrtc_id;
}

// Refusals come back as {status: "failed", meta: {error}, message}: show the message as it is.
export async function readError(resp) {
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
    const done = () => {
      if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have rather than hang
  });
}

/** Relay-only and no relay address: say why now, instead of a connection that silently never comes. */
function checkRelay(config, sdp, iceErrors) {
  if (config.iceTransportPolicy !== "relay" || / typ relay/.test(sdp)) return;
  const turn = (config.iceServers ?? []).some((s) => [].concat(s.urls).some((u) => u.startsWith("turn")));
  if (!turn) throw new Error("This server allows relayed connections only, but gave no TURN server.");
  const rejected = iceErrors.some((e) => / 401\b/.test(e));
  throw new Error(rejected
    ? `The TURN server rejected the credentials (401), so no relayed connection is possible. (${iceErrors[0]})`
    : `Could not get a relay address from the TURN server (unreachable or refused${iceErrors.length ? `: ${iceErrors[0]}` : ""}).`);
}

export async function postInput(stream, id, params) {
  return fetch(sessionUrl(`${stream}/input`, id), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ webrtc_id: id, ...params }),
  });
}

/**
 * The server-side sources of a video stream: {files: [{name, bytes}], urls, uploads, upload_max_bytes}.
 * Before any session (`id` null) the stored access token is the credential; null when the stream
 * has no sources or the server wants a token this page does not have yet.
 */
export async function listMedia(stream, id) {
  const url = id ? sessionUrl(`${stream}/media`, id) : `${stream}/media?webrtc_id=page`;
  const resp = await fetch(url, { headers: id ? {} : authHeaders(accessToken()) });
  return resp.ok ? resp.json() : null;
}

/**
 * Upload `file` (multipart field `file`) to `${stream}/upload` with XMLHttpRequest, which, unlike
 * fetch, reports upload progress: onProgress(fraction 0..1), onSent() once the last byte is out
 * (the server then checks the video). Resolves {ok, status, body, message}; `signal` aborts it.
 */
export function uploadVideo(stream, id, file, { onProgress, onSent, signal } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", sessionUrl(`${stream}/upload`, id));
    xhr.responseType = "json";
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress?.(ev.loaded / ev.total); };
    xhr.upload.onload = () => { onProgress?.(1); onSent?.(); };
    xhr.onload = () => {
      const body = xhr.response; // null when the answer is not JSON
      const message = body?.message || body?.meta?.error || `HTTP ${xhr.status}`;
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, body, message });
    };
    xhr.onerror = () => resolve({ ok: false, status: 0, body: null,
      message: "the connection broke off during the upload (a proxy's size limit, or the network)" });
    xhr.onabort = () => resolve({ ok: false, status: 0, body: null, aborted: true, message: "cancelled" });
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/**
 * Connect one session. `setup(pc)` adds tracks or transceivers before the offer.
 * Calls onMessage(msg) for data-channel JSON, onState(state) for connection states,
 * onReport(report) for /outputs events. Returns {id, pc, close()} or throws Error(message).
 */
export async function connect(stream, { setup, onTrack, onMessage, onState, onReport }) {
  const id = await newSession();
  const configResp = await fetch(sessionUrl("/api/rtc-config", id));
  if (!configResp.ok) throw new Error(`Could not get the ICE configuration: ${await readError(configResp)}`);
  const config = await configResp.json();
  const pc = new RTCPeerConnection(config);
  let events = null;
  const close = () => { events?.close(); pc.close(); sessionTokens.delete(id); };
  try {
    const channel = pc.createDataChannel("text"); // must exist before the offer, or no media flows
    channel.onmessage = (ev) => { try { onMessage?.(JSON.parse(ev.data)); } catch { /* not JSON */ } };
    setup(pc);
    pc.ontrack = (ev) => onTrack?.(ev);
    pc.onconnectionstatechange = () => onState?.(pc.connectionState);
    const iceErrors = [];
    pc.onicecandidateerror = (ev) => iceErrors.push(`${ev.url ?? "?"}: ${ev.errorCode} ${ev.errorText ?? ""}`.trim());
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    checkRelay(config, pc.localDescription.sdp, iceErrors);
    const resp = await fetch(sessionUrl(`${stream}/webrtc/offer`, id), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", webrtc_id: id }),
    });
    if (!resp.ok) throw new Error(`The server refused the connection: ${await readError(resp)}`);
    await pc.setRemoteDescription(await resp.json());
    events = new EventSource(sessionUrl(`${stream}/outputs`, id));
    events.addEventListener("output", (ev) => {
      const report = JSON.parse(ev.data);
      // the server says why it ended a session on both channels; the data channel may already be gone
      if (report.type === "ended") onMessage?.({ type: "end_stream", reason: report.reason, data: report.message });
      else onReport?.(report);
    });
    events.addEventListener("end", () => events.close());
    events.onerror = () => { if (pc.connectionState === "closed") events.close(); };
    (window.rtcPeers ??= {})[stream] = pc; // for getStats() from the console (and the tests)
  } catch (err) {
    close();
    throw err;
  }
  return { id, pc, close };
}

export function describeState(state) {
  return {
    connected: ["Connected.", "live"],
    connecting: ["Connecting…", ""],
    failed: ["The connection failed (network or firewall; a TURN server may be needed).", "error"],
    disconnected: ["Disconnected.", ""],
    closed: ["Disconnected.", ""],
  }[state] ?? [state, ""];
}
