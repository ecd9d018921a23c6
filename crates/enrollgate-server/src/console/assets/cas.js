// Third-party CAs: list, create from a pasted or uploaded PEM, the proof of possession
// spelled out and uploaded, flags and name format edited, the reusable JWT, delete.
import { h, field, json, request, say, sayError, dialog, download, when, daysUntil, badge, readFileText } from './api.js';

let root;

export function show(el) {
  root = el;
  el.replaceChildren(
    h('h1', { id: 'cas-title' }, 'Certificate authorities'),
    h('p', { class: 'muted' }, 'CAs that issued your devices\' certificates. A CA is used only once verified: prove you hold its key by uploading a certificate it signed whose common name is the CA\'s verification token.'),
    createForm(),
    h('div', { class: 'card' }, h('h2', {}, 'Registered CAs'), h('div', { id: 'ca-table' })),
    h('div', { id: 'ca-detail' }));
  load();
}

export function hide() { root = null; }

const yes = (v) => badge(v ? 'yes' : 'no', v ? 'yes' : 'no');

async function load() {
  if (!root) return;
  try {
    const rows = (await json('GET', '/cas')).data;
    if (!root) return;
    root.querySelector('#ca-table').replaceChildren(rows.length ? h('table', { 'aria-label': 'Certificate authorities' },
      h('thead', {}, h('tr', {}, ['Name', 'Verified', 'Auto-enroll', 'ottca', 'Authenticate', 'Identity name format', 'Expires', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map(row))) : h('p', { class: 'muted' }, 'No CA yet.'));
  } catch (e) { sayError(e); }
}

function row(c) {
  const d = c.notAfter ? daysUntil(c.notAfter) : 0;
  return h('tr', {},
    h('th', { scope: 'row' }, c.name),
    h('td', {}, c.isVerified ? badge('verified', 'yes') : badge('not verified', 'expired')),
    h('td', {}, yes(c.isAutoCaEnrollmentEnabled)),
    h('td', {}, yes(c.isOttCaEnrollmentEnabled)),
    h('td', {}, yes(c.isAuthEnabled)),
    h('td', {}, h('code', {}, c.identityNameFormat)),
    h('td', { class: d < 0 ? 'past' : d < 30 ? 'soon' : '' }, when(c.notAfter)),
    h('td', { class: 'actions' },
      c.isVerified ? null : h('button', { type: 'button', class: 'primary', 'aria-label': `Verify ${c.name}`, onclick: () => verifyPanel(c) }, 'Verify'),
      h('button', { type: 'button', 'aria-label': `Edit ${c.name}`, onclick: () => editPanel(c) }, 'Edit'),
      h('button', { type: 'button', 'aria-label': `Download JWT of CA ${c.name}`, onclick: () => jwt(c) }, 'JWT'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete CA ${c.name}`, onclick: () => remove(c) }, 'Delete')));
}

function flags(c = {}) {
  const box = (label, key) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: key, checked: !!c[key] }), label);
  return h('div', { class: 'row' },
    box('Auto-enrollment (method ca)', 'isAutoCaEnrollmentEnabled'),
    box('ottca tokens', 'isOttCaEnrollmentEnabled'),
    box('Authentication', 'isAuthEnabled'));
}

function readFlags(form) {
  const out = {};
  for (const k of ['isAutoCaEnrollmentEnabled', 'isOttCaEnrollmentEnabled', 'isAuthEnabled']) out[k] = form.querySelector(`[name=${k}]`).checked;
  return out;
}

function createForm() {
  const name = h('input', { required: true, autocomplete: 'off' });
  const pem = h('textarea', { placeholder: '-----BEGIN CERTIFICATE-----' });
  const file = h('input', { type: 'file', accept: '.pem,.crt,.cer' });
  const format = h('input', { value: '[caName]-[commonName]' });
  const roles = h('input', { placeholder: 'a,b' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'create-ca-title' },
    h('h2', { id: 'create-ca-title' }, 'Add a CA'),
    h('div', { class: 'row' }, field('CA name', name), field('Identity name format', format), field('Identity roles (comma-separated)', roles)),
    field('CA certificate (PEM)', pem),
    h('div', { class: 'row' }, field('Or upload the CA certificate file', file)),
    flags({ isAutoCaEnrollmentEnabled: true, isOttCaEnrollmentEnabled: true, isAuthEnabled: true }),
    h('button', { type: 'submit', class: 'primary' }, 'Add CA'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const certPem = pem.value.trim() || (await readFileText(file)).trim();
    const body = {
      name: name.value.trim(), certPem, identityNameFormat: format.value.trim() || undefined,
      identityRoles: roles.value.split(',').map((s) => s.trim()).filter(Boolean), ...readFlags(form),
    };
    try {
      const c = (await json('POST', '/cas', body)).data;
      say(`CA ${c.name} added; verify it next`);
      form.reset();
      await load();
      verifyPanel(c);
    } catch (err) { sayError(err); }
  });
  return form;
}

function detail(title, ...children) {
  const box = h('section', { class: 'card', 'aria-labelledby': 'ca-detail-title' }, h('h2', { id: 'ca-detail-title' }, title), ...children);
  root.querySelector('#ca-detail').replaceChildren(box);
  box.scrollIntoView({ block: 'nearest' });
  return box;
}

function verifyPanel(c) {
  const token = c.verificationToken;
  const proof = h('textarea', { placeholder: '-----BEGIN CERTIFICATE-----' });
  const file = h('input', { type: 'file', accept: '.pem,.crt' });
  const cmds = `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout verify.key \\\n    -subj "/CN=${token}" -out verify.csr\n` +
    `openssl x509 -req -in verify.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\\n    -days 1 -out verify.pem`;
  const submit = async (ev) => {
    ev.preventDefault();
    const pem = proof.value.trim() || (await readFileText(file)).trim();
    try {
      await request('POST', `/cas/${encodeURIComponent(c.id)}/verify`, pem);
      say(`CA ${c.name} verified`);
      root.querySelector('#ca-detail').replaceChildren();
      load();
    } catch (err) { sayError(err); }
  };
  detail(`Verify CA ${c.name}`,
    h('ol', { class: 'steps' },
      h('li', {}, 'The common name (CN) to use is the verification token: ', h('code', { 'aria-label': 'Verification token' }, token)),
      h('li', {}, 'Where the CA\'s key is (ca.pem and ca.key), make a certificate with that CN, signed by the CA:', h('pre', {}, cmds)),
      h('li', {}, 'Paste verify.pem below or upload it. The key verify.key is not needed here; delete it.')),
    h('form', { onsubmit: submit },
      field('Proof certificate (PEM)', proof),
      h('div', { class: 'row' }, field('Or upload the proof certificate file', file),
        h('button', { type: 'submit', class: 'primary' }, 'Upload proof and verify'))));
}

function editPanel(c) {
  const name = h('input', { value: c.name });
  const format = h('input', { value: c.identityNameFormat });
  const roles = h('input', { value: (c.identityRoles || []).join(',') });
  const form = h('form', {},
    h('div', { class: 'row' }, field('CA name', name), field('Identity name format', format), field('Identity roles (comma-separated)', roles)),
    h('p', { class: 'muted' }, 'Name templates: [caName], [caId], [commonName], [requestedName], [identityId].'),
    flags(c),
    h('button', { type: 'submit', class: 'primary' }, 'Save changes'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), identityNameFormat: format.value.trim(), identityRoles: roles.value.split(',').map((s) => s.trim()).filter(Boolean), ...readFlags(form) };
    try {
      await json('PATCH', `/cas/${encodeURIComponent(c.id)}`, body);
      say(`CA ${body.name} saved`);
      root.querySelector('#ca-detail').replaceChildren();
      load();
    } catch (err) { sayError(err); }
  });
  detail(`Edit CA ${c.name}`, form);
}

async function jwt(c) {
  try {
    const r = await request('GET', `/cas/${encodeURIComponent(c.id)}/jwt`, undefined, 'application/jwt');
    download(`${c.name}.jwt`, `${(await r.text()).trim()}\n`);
  } catch (err) { sayError(err); }
}

async function remove(c) {
  let bound;
  try { bound = (await json('GET', `/cas/${encodeURIComponent(c.id)}/bound-identities`)).data; } catch (err) { sayError(err); return; }
  const n = bound.enrolledCount;
  const p = bound.pendingOttcaCount;
  const answer = await dialog(`Delete CA ${c.name}?`, [
    h('p', {}, `${n} ${n === 1 ? 'identity is' : 'identities are'} enrolled through this CA and ${p} ${p === 1 ? 'waits' : 'wait'} for an ottca token from it.`),
    h('p', {}, 'Their certificates stop authenticating through it, and waiting ottca tokens can no longer be redeemed.')],
  [{ label: 'Cancel' }, { label: 'Delete CA', class: 'primary danger' }]);
  if (answer !== 'Delete CA') return;
  try {
    await request('DELETE', `/cas/${encodeURIComponent(c.id)}`);
    say(`CA ${c.name} deleted`);
    load();
  } catch (err) { sayError(err); }
}
