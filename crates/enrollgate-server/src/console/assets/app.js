// The console's shell: sign-in, navigation between pages, sign-out.
import { currentSession, onSessionChange, signInWithCode, signInWithCertificate, signOut } from './api.js';
import * as identities from './identities.js';
import * as cas from './cas.js';
import * as live from './live.js';

const pages = { identities, cas, live };
let shown = null;

function pageName() {
  const name = location.hash.replace(/^#/, '');
  return pages[name] ? name : 'identities';
}

function render() {
  const s = currentSession();
  document.getElementById('nav').hidden = !s;
  document.getElementById('sign-out').hidden = !s;
  document.getElementById('who').textContent = s ? `signed in as ${s.identity.name}` : '';
  document.getElementById('page-signin').hidden = !!s;
  for (const [name, page] of Object.entries(pages)) {
    const el = document.getElementById(`page-${name}`);
    const visible = !!s && name === pageName();
    el.hidden = !visible;
    if (!visible) {
      if (shown === name) page.hide?.();
      el.replaceChildren(); // no data left in the page without a session
    }
  }
  if (!s) { shown = null; document.title = 'Sign in · enrollgate console'; return; }
  const name = pageName();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (shown !== name) {
    shown = name;
    pages[name].show(document.getElementById(`page-${name}`));
  }
}

function signInFailed(e) {
  document.getElementById('signin-error').textContent = `Sign-in refused: ${e.message}`;
}

async function start() {
  onSessionChange(render);
  window.addEventListener('hashchange', () => {
    if (location.hash.startsWith('#login=')) { useLoginFragment(); return; }
    render();
  });
  document.getElementById('sign-out').addEventListener('click', () => signOut());
  document.getElementById('cert-sign-in').addEventListener('click', () => {
    document.getElementById('signin-error').textContent = '';
    signInWithCertificate().catch(signInFailed);
  });
  if (location.hash.startsWith('#login=')) await useLoginFragment();
  render();
}

// The code arrives in the fragment (never sent to a server, never in a Referer); it is
// removed from the address bar and history before it is used.
async function useLoginFragment() {
  const code = location.hash.slice('#login='.length);
  history.replaceState(null, '', location.pathname + '#identities');
  try { await signInWithCode(code); } catch (e) { signInFailed(e); }
}

start();
