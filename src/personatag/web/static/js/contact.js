// A contact's page: edit attributes (PATCH, the same change feed as the API),
// pin and unpin. The search page needs no script.
"use strict";

const CONTACT_FLASH = "pt-contact-flash";

function contactId() {
  const head = el("contact-head");
  return head ? head.dataset.contact : null;
}

// Why a field's text cannot be saved, before asking the server ("" if it can).
function fieldProblem(type, text) {
  const v = text.trim();
  if (v === "") return "";
  if (type === "int" && !/^[+-]?\d+$/.test(v)) return "a whole number, e.g. 3";
  if (type === "float" && !Number.isFinite(Number(v))) return "a number, e.g. 2.5";
  if (type === "bool" && !/^(true|false|1|0|yes|no)$/i.test(v)) return "true or false";
  if (type === "timestamp" && Number.isNaN(Date.parse(v))) return "a time, e.g. 2026-01-31T09:00:00Z";
  return "";
}

function showFieldError(name, message) {
  const input = el(`attr-${name}`);
  const out = el(`attr-${name}-error`);
  if (!input || !out) return false;
  out.textContent = message;
  input.setAttribute("aria-invalid", message ? "true" : "false");
  return true;
}

function initAttributes(id) {
  const form = el("attr-form");
  if (!form) return;
  const view = el("attr-view");
  const open = (editing) => {
    form.hidden = !editing;
    view.hidden = editing;
    el("attr-edit").hidden = editing;
    if (editing) form.querySelector("input").focus();
  };
  el("attr-edit").addEventListener("click", () => open(true));
  el("attr-cancel").addEventListener("click", () => {
    form.reset();
    form.querySelectorAll("input").forEach((i) => showFieldError(i.name, ""));
    open(false);
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const fields = {};
    let bad = false;
    form.querySelectorAll("input[data-type]").forEach((input) => {
      const problem = fieldProblem(input.dataset.type, input.value);
      showFieldError(input.name, problem ? `expected ${problem}` : "");
      if (problem) bad = true;
      if (input.value !== input.dataset.was) fields[input.name] = input.value.trim();
    });
    if (bad) { PT.toast("Some fields need fixing; see the messages under them.", "error"); return; }
    if (!Object.keys(fields).length) { PT.toast("Nothing changed."); open(false); return; }
    const save = el("attr-save");
    save.disabled = true;
    const r = await api("PATCH", `/contacts/${encodeURIComponent(id)}`, { fields });
    save.disabled = false;
    if (r.ok) {
      sessionStorage.setItem(CONTACT_FLASH, `Saved ${r.data.changed.join(", ")}.`);
      location.reload();
      return;
    }
    const message = errorText(r);
    const m = /field '([^']+)'/.exec(message);
    if (!(m && showFieldError(m[1], message))) PT.toast(message, "error");
    else PT.toast("Not saved: see the field marked.", "error");
  });
}

function initPins(id) {
  const status = el("pin-status");
  if (!status) return;
  const done = (r, message) => {
    if (r.ok) { sessionStorage.setItem(CONTACT_FLASH, message); location.reload(); return; }
    status.textContent = errorText(r);
    status.className = "status error";
    PT.toast(errorText(r), "error");
  };
  document.querySelectorAll("button.pin").forEach((b) => b.addEventListener("click", async () => {
    const persona = el("pin-persona").value;
    const r = await api("POST", `/contacts/${encodeURIComponent(id)}/pins`, { persona, kind: b.dataset.kind });
    done(r, `Pinned ${b.dataset.kind} ${persona}.`);
  }));
  el("unpin").addEventListener("click", async () => {
    const persona = el("pin-persona").value;
    const r = await api("DELETE", `/contacts/${encodeURIComponent(id)}/pins/${encodeURIComponent(persona)}`);
    done(r, `Unpinned ${persona}.`);
  });
}

function initContact() {
  const id = contactId();
  if (!id) return;
  const flash = sessionStorage.getItem(CONTACT_FLASH);
  if (flash) { sessionStorage.removeItem(CONTACT_FLASH); PT.toast(flash, "ok"); }
  initAttributes(id);
  initPins(id);
}

PT.ready(initContact);
