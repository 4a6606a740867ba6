// A contact's page: pins.
"use strict";

function initContact() {
  const status = el("pin-status");
  if (!status) return;
  const id = new URLSearchParams(location.search).get("id");
  document.querySelectorAll("button.pin").forEach((b) => b.addEventListener("click", async () => {
    const r = await api("POST", `/contacts/${encodeURIComponent(id)}/pins`, { persona: el("pin-persona").value, kind: b.dataset.kind });
    if (r.ok) location.reload(); else { status.textContent = errorText(r); status.className = "status error"; }
  }));
  el("unpin").addEventListener("click", async () => {
    const r = await api("DELETE", `/contacts/${encodeURIComponent(id)}/pins/${encodeURIComponent(el("pin-persona").value)}`);
    if (r.ok) location.reload(); else { status.textContent = errorText(r); status.className = "status error"; }
  });
}

PT.ready(initContact);
