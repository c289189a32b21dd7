// Access to a server started with AUTH_TOKEN: the person pastes the token once; it stays in this
// browser (localStorage) and buys short-lived session tokens from POST /api/session.
const KEY = "rtserver-access-token";

export function accessToken() {
  return localStorage.getItem(KEY) || "";
}

/** Show the token form with the server's reason; resolves nothing, the person retries after saving. */
export function askForToken(message) {
  const form = document.getElementById("access");
  if (!form) return;
  form.hidden = false;
  document.getElementById("access-reason").textContent = message;
  form.onsubmit = (ev) => {
    ev.preventDefault();
    localStorage.setItem(KEY, document.getElementById("access-token").value.trim());
    form.hidden = true;
  };
}
