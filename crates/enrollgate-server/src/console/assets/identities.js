// Identities: search, filters, paging (all on the server), create, and per identity the
// JWT (download, QR code), a new token, delete.
import { h, field, json, request, say, sayError, dialog, download, when, daysUntil, badge } from './api.js';

const PAGE = 50;
let state = { offset: 0, search: '', type: '', enrollment: '', expiring: '' };
let root;
let cas = [];

function stateOf(i) {
  if (i.hasEnrolled) return 'enrolled';
  const e = i.enrollment.ott || i.enrollment.ottca;
  if (!e) return 'none';
  return Date.parse(e.expiresAt) > Date.now() ? 'pending' : 'expired';
}

const STATE_TEXT = { enrolled: 'enrolled', pending: 'pending', expired: 'token expired', none: 'no token' };

function query() {
  const q = new URLSearchParams({ offset: String(state.offset), limit: String(PAGE) });
  if (state.search) q.set('filter', `name contains "${state.search.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`);
  if (state.type) q.set('type', state.type);
  if (state.enrollment) q.set('state', state.enrollment);
  if (state.expiring) q.set('certExpiringWithin', `${state.expiring}d`);
  return q.toString();
}

export function show(el) {
  root = el;
  state.offset = 0;
  el.replaceChildren(
    h('h1', { id: 'identities-title' }, 'Identities'),
    createForm(),
    h('div', { class: 'card' },
      h('h2', {}, 'Fleet'),
      filters(),
      h('div', { id: 'identity-table' }),
      h('div', { class: 'pager' },
        h('button', { type: 'button', id: 'prev', onclick: () => { state.offset = Math.max(0, state.offset - PAGE); load(); } }, 'Previous page'),
        h('span', { id: 'page-info', 'aria-live': 'polite' }),
        h('button', { type: 'button', id: 'next', onclick: () => { state.offset += PAGE; load(); } }, 'Next page'))));
  loadCas();
  load();
}

export function hide() { root = null; }

function filters() {
  let timer;
  const changed = () => { state.offset = 0; clearTimeout(timer); timer = setTimeout(load, 250); };
  const search = h('input', { type: 'search', value: state.search, placeholder: 'name contains…', oninput: (e) => { state.search = e.target.value; changed(); } });
  const type = h('select', { onchange: (e) => { state.type = e.target.value; changed(); } },
    h('option', { value: '' }, 'All types'), ['User', 'Device', 'Service'].map((t) => h('option', { value: t }, t)));
  const enrollment = h('select', { onchange: (e) => { state.enrollment = e.target.value; changed(); } },
    h('option', { value: '' }, 'Any state'), h('option', { value: 'pending' }, 'Pending'),
    h('option', { value: 'enrolled' }, 'Enrolled'), h('option', { value: 'expired' }, 'Token expired'),
    h('option', { value: 'none' }, 'No token'));
  const expiring = h('input', { type: 'number', min: '1', max: '3650', value: state.expiring, placeholder: 'days', oninput: (e) => { state.expiring = e.target.value; changed(); } });
  type.value = state.type; enrollment.value = state.enrollment;
  return h('div', { class: 'row', role: 'search' },
    field('Search by name', search),
    field('Type', type),
    field('Enrollment state', enrollment),
    field('Certificate expires within (days)', expiring));
}

async function load() {
  if (!root) return;
  try {
    const j = await json('GET', `/identities?${query()}`);
    if (!root) return;
    const total = j.meta.pagination.totalCount;
    if (state.offset >= total && total > 0) { state.offset = Math.floor((total - 1) / PAGE) * PAGE; return load(); }
    root.querySelector('#identity-table').replaceChildren(table(j.data));
    const first = total ? state.offset + 1 : 0;
    root.querySelector('#page-info').textContent = `${first}–${state.offset + j.data.length} of ${total}`;
    root.querySelector('#prev').disabled = state.offset === 0;
    root.querySelector('#next').disabled = state.offset + PAGE >= total;
  } catch (e) { sayError(e); }
}

function certCell(i) {
  const a = i.authenticators.cert;
  if (!a) return '';
  const d = daysUntil(a.notAfter);
  return h('span', { class: d < 0 ? 'past' : d < 30 ? 'soon' : '' }, when(a.notAfter));
}

function table(rows) {
  if (!rows.length) return h('p', { class: 'muted' }, 'No identity matches.');
  return h('table', { 'aria-label': 'Identities' },
    h('thead', {}, h('tr', {}, ['Name', 'Type', 'Roles', 'State', 'Token expires', 'Enrolled', 'Certificate expires', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map(row)));
}

function row(i) {
  const st = stateOf(i);
  const e = i.enrollment.ott || i.enrollment.ottca;
  const actions = [];
  if (e && st === 'pending') {
    actions.push(h('button', { type: 'button', 'aria-label': `Download JWT of ${i.name}`, onclick: () => download(`${i.name}.jwt`, `${e.jwt}\n`) }, 'JWT'));
    actions.push(h('button', { type: 'button', 'aria-label': `Show QR code of ${i.name}`, onclick: () => showQr(i, e) }, 'QR'));
  }
  if (e) actions.push(h('button', { type: 'button', 'aria-label': `Reissue token of ${i.name}`, onclick: () => reissue(i, e) }, 'New token'));
  actions.push(h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${i.name}`, onclick: () => remove(i) }, 'Delete'));
  return h('tr', {},
    h('th', { scope: 'row' }, i.name, i.isAdmin ? h('span', { class: 'muted' }, ' (admin)') : null),
    h('td', {}, i.type),
    h('td', {}, i.roleAttributes.join(', ')),
    h('td', {}, badge(STATE_TEXT[st], st), e && e.method === 'ottca' ? h('span', { class: 'muted' }, ' ottca') : null),
    h('td', { class: st === 'expired' ? 'past' : '' }, e ? when(e.expiresAt) : ''),
    h('td', {}, i.authenticators.cert ? when(i.authenticators.cert.createdAt) : ''),
    h('td', {}, certCell(i)),
    h('td', { class: 'actions' }, actions));
}

async function showQr(i, e) {
  try {
    const r = await request('GET', `/enrollments/${encodeURIComponent(e.id)}/qr.svg`, undefined, 'image/svg+xml');
    const url = URL.createObjectURL(await r.blob());
    const img = h('img', { class: 'qr', src: url, alt: `QR code of the enrollment token of ${i.name}` });
    await dialog(`Enrollment token of ${i.name}`, [img, h('p', { class: 'muted' }, `Expires ${when(e.expiresAt)}. Anyone who scans it can enroll as ${i.name}.`)]);
    URL.revokeObjectURL(url);
  } catch (err) { sayError(err); }
}

async function reissue(i, e) {
  try {
    await json('POST', `/enrollments/${encodeURIComponent(e.id)}/refresh`, {});
    say(`${i.name} has a new token; the old one no longer works`);
    load();
  } catch (err) { sayError(err); }
}

async function remove(i) {
  const answer = await dialog(`Delete ${i.name}?`,
    h('p', {}, `The identity ${i.name} and its certificate binding are removed; it can no longer authenticate. This cannot be undone.`),
    [{ label: 'Cancel' }, { label: 'Delete identity', class: 'primary danger' }]);
  if (answer !== 'Delete identity') return;
  try {
    await request('DELETE', `/identities/${encodeURIComponent(i.id)}`);
    say(`${i.name} deleted`);
    load();
  } catch (err) { sayError(err); }
}

async function loadCas() {
  try { cas = (await json('GET', '/cas')).data; } catch (_) { cas = []; }
  const sel = root && root.querySelector('#new-ca');
  if (sel) sel.replaceChildren(h('option', { value: '' }, 'none: one-time token (ott)'), ...cas.map((c) => h('option', { value: c.id }, `${c.name}${c.isVerified ? '' : ' (unverified)'}`)));
}

function createForm() {
  const name = h('input', { required: true, autocomplete: 'off', id: 'new-name' });
  const type = h('select', {}, ['Device', 'User', 'Service'].map((t) => h('option', { value: t }, t)));
  const roles = h('input', { placeholder: 'a,b', id: 'new-roles' });
  const admin = h('input', { type: 'checkbox' });
  const ca = h('select', { id: 'new-ca' }, h('option', { value: '' }, 'none: one-time token (ott)'));
  const result = h('div', { id: 'created' });
  const submit = async (ev) => {
    ev.preventDefault();
    const body = {
      name: name.value.trim(), type: type.value, isAdmin: admin.checked,
      roleAttributes: roles.value.split(',').map((s) => s.trim()).filter(Boolean),
      enrollment: ca.value ? { ottca: ca.value } : { ott: true },
    };
    try {
      const j = await json('POST', '/identities', body);
      const i = j.data;
      const e = i.enrollment.ott || i.enrollment.ottca;
      say(`${i.name} created`);
      result.replaceChildren(h('p', {}, `Created ${i.name}. Its token expires ${when(e.expiresAt)}. `,
        h('button', { type: 'button', onclick: () => download(`${i.name}.jwt`, `${e.jwt}\n`) }, `Download JWT of ${i.name}`), ' ',
        h('button', { type: 'button', onclick: () => showQr(i, e) }, `Show QR code of ${i.name}`)));
      name.value = '';
      load();
    } catch (err) { sayError(err); }
  };
  return h('form', { class: 'card', 'aria-labelledby': 'create-identity-title', onsubmit: submit },
    h('h2', { id: 'create-identity-title' }, 'Create an identity'),
    h('div', { class: 'row' },
      field('Name', name),
      field('Type', type),
      field('Role attributes (comma-separated)', roles),
      field('Enroll with a certificate from CA (ottca)', ca),
      h('label', { class: 'check' }, admin, 'Administrator'),
      h('button', { type: 'submit', class: 'primary' }, 'Create identity')),
    result);
}
