// fastrtc's WebRTC protocol, shared by every panel (see README, "Client protocol").

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

export async function postInput(stream, id, params) {
  return fetch(`${stream}/input`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ webrtc_id: id, ...params }),
  });
}

/**
 * Connect one session. `setup(pc)` adds tracks or transceivers before the offer.
 * Calls onMessage(msg) for data-channel JSON, onState(state) for connection states,
 * onReport(report) for /outputs events. Returns {id, pc, close()} or throws Error(message).
 */
export async function connect(stream, { setup, onTrack, onMessage, onState, onReport }) {
  const id = crypto.randomUUID();
  const config = await (await fetch("/api/rtc-config")).json();
  const pc = new RTCPeerConnection(config);
  let events = null;
  const close = () => { events?.close(); pc.close(); };
  try {
    const channel = pc.createDataChannel("text"); // must exist before the offer, or no media flows
    channel.onmessage = (ev) => { try { onMessage?.(JSON.parse(ev.data)); } catch { /* not JSON */ } };
    setup(pc);
    pc.ontrack = (ev) => onTrack?.(ev);
    pc.onconnectionstatechange = () => onState?.(pc.connectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const resp = await fetch(`${stream}/webrtc/offer`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", webrtc_id: id }),
    });
    if (!resp.ok) throw new Error(`The server refused the connection: ${await readError(resp)}`);
    await pc.setRemoteDescription(await resp.json());
    events = new EventSource(`${stream}/outputs?webrtc_id=${encodeURIComponent(id)}`);
    events.onmessage = (ev) => onReport?.(JSON.parse(ev.data));
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
