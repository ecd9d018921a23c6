// The session and the management API. The session token lives in this module's memory
// only (no cookie, no storage): a reload signs out. It travels as the zt-session header,
// which no other site can make the browser send.

const BASE = '/edge/management/v1';
let session = null;
const listeners = [];

export function currentSession() { return session; }

export function onSessionChange(fn) { listeners.push(fn); }

export function setSession(s) {
  session = s;
  for (const fn of listeners) fn(session);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function failure(r) {
  let code = `HTTP_${r.status}`;
  let message = `the gateway answered HTTP ${r.status}`;
  try {
    const j = await r.json();
    if (j && j.error) { code = j.error.code; message = j.error.message; }
  } catch (_) { /* not JSON */ }
  if (r.status === 401 && session) setSession(null); // expired or revoked: sign in again
  return new ApiError(r.status, code, message);
}

// A management request. `body`: an object (sent as JSON) or a string (sent as text/plain).
export async function request(method, path, body, accept = 'application/json') {
  const headers = { Accept: accept };
  if (session) headers['zt-session'] = session.token;
  let payload;
  if (typeof body === 'string') { headers['Content-Type'] = 'text/plain'; payload = body; }
  else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  const r = await fetch(BASE + path, { method, headers, body: payload, cache: 'no-store', credentials: 'same-origin', referrerPolicy: 'no-referrer' });
  if (!r.ok) throw await failure(r);
  return r;
}

export async function json(method, path, body) {
  const r = await request(method, path, body);
  return r.json();
}

// Signing in: with a one-time login code, or with the certificate the browser presents.
export async function signInWithCode(code) {
  const j = await json('POST', '/console/sessions', { code });
  setSession(j.data);
}

export async function signInWithCertificate() {
  const j = await json('POST', '/console/sessions/cert', {});
  setSession(j.data);
}

export async function signOut() {
  try { await request('DELETE', '/console/sessions/current'); } catch (_) { /* gone already */ }
  setSession(null);
}

// ---- small DOM helpers: text is always set as text, never parsed as HTML ----

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'style') el.style.cssText = v; // CSSOM: allowed by the CSP, unlike a style attribute
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A control with its visible label, tied by for/id: its accessible name is the label text
// alone (a label wrapped around a select would add the chosen option to it).
let fieldIds = 0;
export function field(text, control) {
  if (!control.id) control.id = `field-${++fieldIds}`;
  return h('div', { class: 'field' }, h('label', { for: control.id }, text), control);
}

export function say(text) {
  const s = document.getElementById('status');
  s.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { s.textContent = ''; }, 6000);
}

export function sayError(e) { say(e.code ? `${e.code}: ${e.message}` : String(e.message || e)); }

// A modal dialog; resolves with the label of the button pressed (or null when dismissed).
export function dialog(title, body, buttons = [{ label: 'Close' }]) {
  const d = document.getElementById('dialog');
  document.getElementById('dialog-title').textContent = title;
  const bodyEl = document.getElementById('dialog-body');
  bodyEl.replaceChildren(...[body].flat());
  const actions = document.getElementById('dialog-actions');
  return new Promise((resolve) => {
    const done = (v) => { d.close(); resolve(v); };
    actions.replaceChildren(...buttons.map((b) => h('button', { type: 'button', class: b.class, onclick: () => done(b.label) }, b.label)));
    d.onclose = () => resolve(null);
    d.showModal();
  });
}

export function download(filename, text, type = 'application/jwt') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function when(iso) {
  if (!iso) return '';
  return iso.replace('T', ' ').replace(/:\d\dZ$/, ' UTC').replace(/Z$/, ' UTC');
}

export function daysUntil(iso) {
  return (Date.parse(iso) - Date.now()) / 86400000;
}

export function badge(text, kind) { return h('span', { class: `badge ${kind}` }, text); }

export function readFileText(input) {
  const f = input.files && input.files[0];
  return f ? f.text() : Promise.resolve('');
}
