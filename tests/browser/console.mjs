// Drives the enrollgate web console in Debian's chromium through playwright-core.
// Started by tests/it/console.rs against a real daemon; every check prints "ok: ..." and
// the last line is "console: all checks passed" (exit 0), or the script exits 1 with the
// failed check, a screenshot of the page in $EG_WORK/failure.png.
//
// Environment (all set by the Rust test):
//   EG_URL               https://127.0.0.1:PORT
//   EG_LOGIN_URL         a fresh one-time login link
//   EG_EXPIRED_URL       a login link that has expired
//   EG_ADMIN_CERT/KEY    the admin's certificate and key (PEM), for certificate sign-in
//   EG_GATEWAY_CA        the gateway's CA (for curl)
//   EG_CA_PEM/KEY        a third-party CA made with openssl (to add and verify)
//   EG_SURGE_TOKENS      tokens (comma-separated) redeemed while the live view watches
//   EG_WORK              a scratch directory
//   EG_SCREENSHOTS       where the README's screenshots go (optional)
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const URL_ = env('EG_URL');
const WORK = env('EG_WORK');
const SHOTS = process.env.EG_SCREENSHOTS || '';
const port = new URL(URL_).port;

const browser = await chromium.launch({
  executablePath: process.env.EG_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let page;
const ok = (what) => console.log(`ok: ${what}`);
const context = (extra = {}) => browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1360, height: 860 }, acceptDownloads: true, ...extra });
const adminCert = { origin: `https://127.0.0.1:${port}`, certPath: env('EG_ADMIN_CERT'), keyPath: env('EG_ADMIN_KEY') };
const shot = async (name, clip) => { if (SHOTS) await page.screenshot({ path: join(SHOTS, `${name}.png`), clip }); };
const run = (cmd, args) => execFileSync(cmd, args, { cwd: WORK, stdio: ['ignore', 'pipe', 'pipe'] }).toString();

try {
  // ---- anonymous: a sign-in prompt and no data ----
  const anon = await context();
  page = await anon.newPage();
  const managementCalls = [];
  page.on('request', (r) => { if (r.url().includes('/edge/management/')) managementCalls.push(r.url()); });
  await page.goto(`${URL_}/console/`);
  await page.getByRole('heading', { name: 'Sign in to the enrollgate console' }).waitFor();
  assert.equal(await page.getByRole('table').count(), 0);
  assert.equal(await page.getByRole('navigation', { name: 'Console pages' }).isVisible(), false);
  await page.waitForTimeout(300);
  assert.deepEqual(managementCalls, [], 'the anonymous page asks the management API for nothing');
  await shot('sign-in', { x: 0, y: 0, width: 1360, height: 400 });
  ok('the anonymous page shows a sign-in prompt and no data');

  // ---- a used or expired login link is refused ----
  await page.goto(env('EG_EXPIRED_URL'));
  await page.getByRole('alert').filter({ hasText: 'Sign-in refused' }).waitFor();
  assert.ok(!page.url().includes('login='), 'the code left the address bar');
  assert.equal(await page.getByRole('table').count(), 0);
  ok('an expired login link is refused');
  await anon.close();

  // ---- sign in with the login link ----
  const admin = await context();
  page = await admin.newPage();
  await page.goto(env('EG_LOGIN_URL'));
  await page.getByRole('heading', { name: 'Identities' }).waitFor();
  assert.ok(!page.url().includes('login='), 'the code left the address bar');
  await page.getByText(/signed in as /).waitFor();
  ok('a login link signs in');

  const again = await context();
  const second = await again.newPage();
  await second.goto(env('EG_LOGIN_URL'));
  await second.getByRole('alert').filter({ hasText: 'Sign-in refused' }).waitFor();
  assert.equal(await second.getByRole('table').count(), 0);
  await again.close();
  ok('a login link used twice is refused');

  // ---- create an identity, download its JWT, see its QR code ----
  await page.getByLabel('Name', { exact: true }).fill('phone-1');
  await page.getByLabel('Type', { exact: true }).first().selectOption('Device');
  await page.getByLabel('Role attributes (comma-separated)').fill('field,phones');
  await page.getByRole('button', { name: 'Create identity' }).click();
  const created = page.locator('#created');
  await created.getByRole('button', { name: 'Download JWT of phone-1' }).waitFor();
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    created.getByRole('button', { name: 'Download JWT of phone-1' }).click(),
  ]);
  const jwtPath = join(WORK, 'phone-1.jwt');
  await download.saveAs(jwtPath);
  const jwt = readFileSync(jwtPath, 'utf8').trim();
  const claims = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
  assert.equal(claims.em, 'ott');
  ok('an identity is created and its JWT downloaded');

  await created.getByRole('button', { name: 'Show QR code of phone-1' }).click();
  const qr = page.getByRole('img', { name: 'QR code of the enrollment token of phone-1' });
  await qr.waitFor();
  assert.ok(await qr.evaluate((img) => img.complete && img.naturalWidth > 0), 'the QR code image loaded');
  await shot('qr-code');
  await page.getByRole('dialog').getByRole('button', { name: 'Close' }).click();
  ok('the QR code is shown');

  // ---- redeem the downloaded JWT with curl and a CSR ----
  run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-subj', '/CN=phone-1', '-keyout', 'phone-1.key', '-out', 'phone-1.csr']);
  const answer = run('curl', ['-sS', '--fail-with-body', '--cacert', env('EG_GATEWAY_CA'),
    '-H', 'Content-Type: application/x-pem-file', '-H', 'Accept: application/x-pem-file',
    '--data-binary', '@phone-1.csr', `${URL_}/edge/client/v1/enroll?method=ott&token=${claims.jti}`]);
  assert.ok(answer.includes('BEGIN CERTIFICATE'), answer);
  ok('the downloaded JWT enrolls with curl');

  // ---- search and filters ----
  await page.getByLabel('Search by name').fill('phone');
  const rowOf = (name) => page.getByRole('row').filter({ has: page.getByRole('rowheader', { name }) });
  await rowOf('phone-1').getByText('enrolled', { exact: true }).waitFor();
  await page.getByLabel('Search by name').fill('');
  await page.getByLabel('Enrollment state').selectOption('expired');
  await rowOf('late-1').waitFor();
  assert.equal(await rowOf('phone-1').count(), 0);
  await page.getByLabel('Enrollment state').selectOption('');
  ok('search and the state filter narrow the list on the server');

  // ---- reissue an expired token, delete with a confirmation ----
  await page.getByRole('button', { name: 'Reissue token of late-1' }).click();
  await rowOf('late-1').getByText('pending', { exact: true }).waitFor();
  ok('an expired token is reissued');
  await page.getByRole('button', { name: 'Delete late-2' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  await rowOf('late-2').waitFor();
  await page.getByRole('button', { name: 'Delete late-2' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete identity' }).click();
  await rowOf('late-2').waitFor({ state: 'detached' });
  ok('an identity is deleted after its confirmation');
  await page.getByRole('heading', { name: 'Identities' }).scrollIntoViewIfNeeded();
  await shot('identities');

  // ---- certificate authorities: create, verify with an openssl-made proof ----
  await page.getByRole('link', { name: 'Certificate authorities' }).click();
  await page.getByRole('heading', { name: 'Certificate authorities' }).waitFor();
  await page.getByLabel('CA name').fill('acme');
  await page.getByLabel('CA certificate (PEM)').fill(readFileSync(env('EG_CA_PEM'), 'utf8'));
  await page.getByRole('button', { name: 'Add CA' }).click();
  await page.getByRole('heading', { name: 'Verify CA acme' }).waitFor();
  const token = (await page.getByLabel('Verification token').textContent()).trim();
  assert.match(token, /^[A-Za-z0-9_-]{16,}$/);
  await page.getByText(`-subj "/CN=${token}"`).waitFor();
  await shot('certificate-authorities');
  run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'verify.key', '-subj', `/CN=${token}`, '-out', 'verify.csr']);
  run('openssl', ['x509', '-req', '-in', 'verify.csr', '-CA', env('EG_CA_PEM'), '-CAkey', env('EG_CA_KEY'),
    '-CAcreateserial', '-days', '1', '-out', 'verify.pem']);
  await page.getByLabel('Or upload the proof certificate file').setInputFiles(join(WORK, 'verify.pem'));
  await page.getByRole('button', { name: 'Upload proof and verify' }).click();
  const caRow = page.getByRole('row').filter({ has: page.getByRole('rowheader', { name: 'acme' }) });
  await caRow.getByText('verified', { exact: true }).waitFor();
  ok('a CA is created and verified with an openssl-made proof');

  await page.getByRole('button', { name: 'Edit acme' }).click();
  await page.locator('#ca-detail').getByLabel('Authentication').uncheck();
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByRole('heading', { name: 'Edit CA acme' }).waitFor({ state: 'detached' });
  // The list is fetched again after the save: wait for the row to show it, then check.
  await caRow.locator('td').nth(3).getByText('no', { exact: true }).waitFor();
  assert.equal(await caRow.locator('td').nth(3).textContent(), 'no', 'Authenticate is off');
  const [caJwt] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download JWT of CA acme' }).click(),
  ]);
  await caJwt.saveAs(join(WORK, 'acme.jwt'));
  const caClaims = JSON.parse(Buffer.from(readFileSync(join(WORK, 'acme.jwt'), 'utf8').trim().split('.')[1], 'base64url').toString());
  assert.equal(caClaims.em, 'ca');
  await page.getByRole('button', { name: 'Delete CA acme' }).click();
  await page.getByRole('dialog').getByText(/0 identities are enrolled through this CA/).waitFor();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  ok('a CA\'s flags are edited, its JWT downloaded, its deletion counts bound identities');

  // A second CA from an uploaded file, deleted after its confirmation.
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-days', '30', '-keyout', 'beta-ca.key', '-subj', '/CN=beta CA', '-out', 'beta-ca.pem']);
  await page.getByLabel('CA name').fill('beta');
  await page.getByLabel('Or upload the CA certificate file').setInputFiles(join(WORK, 'beta-ca.pem'));
  await page.getByRole('button', { name: 'Add CA' }).click();
  await page.getByRole('heading', { name: 'Verify CA beta' }).waitFor();
  await page.getByRole('button', { name: 'Delete CA beta' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete CA' }).click();
  await page.getByRole('rowheader', { name: 'beta' }).waitFor({ state: 'detached' });
  ok('a CA uploaded from a file is deleted after its confirmation');

  // An ottca identity tied to acme, redeemed with a device certificate acme issued.
  await page.getByRole('link', { name: 'Identities' }).click();
  await page.getByLabel('Name', { exact: true }).fill('plc-1');
  await page.getByLabel('Enroll with a certificate from CA (ottca)').selectOption({ label: 'acme' });
  await page.getByRole('button', { name: 'Create identity' }).click();
  const [plcJwt] = await Promise.all([
    page.waitForEvent('download'),
    page.locator('#created').getByRole('button', { name: 'Download JWT of plc-1' }).click(),
  ]);
  await plcJwt.saveAs(join(WORK, 'plc-1.jwt'));
  const plcClaims = JSON.parse(Buffer.from(readFileSync(join(WORK, 'plc-1.jwt'), 'utf8').trim().split('.')[1], 'base64url').toString());
  assert.equal(plcClaims.em, 'ottca');
  writeFileSync(join(WORK, 'device.ext'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'plc-1.key', '-subj', '/CN=plc-1', '-out', 'plc-1.csr']);
  run('openssl', ['x509', '-req', '-in', 'plc-1.csr', '-CA', env('EG_CA_PEM'), '-CAkey', env('EG_CA_KEY'),
    '-CAcreateserial', '-days', '30', '-extfile', 'device.ext', '-out', 'plc-1.pem']);
  run('curl', ['-sS', '--fail-with-body', '-o', '/dev/null', '--cacert', env('EG_GATEWAY_CA'),
    '--cert', 'plc-1.pem', '--key', 'plc-1.key', '-X', 'POST',
    `${URL_}/edge/client/v1/enroll?method=ottca&token=${plcClaims.jti}`]);
  await page.getByLabel('Search by name').fill('plc');
  await rowOf('plc-1').getByText('enrolled', { exact: true }).waitFor();
  await page.getByLabel('Search by name').fill('');
  ok('an ottca identity made in the console enrolls with its CA\'s certificate');

  // ---- live view: a burst of enrollments and refusals arrives in the charts ----
  await page.getByRole('link', { name: 'Live' }).click();
  await page.getByRole('heading', { name: 'Live' }).waitFor();
  await page.waitForTimeout(1500);
  for (let i = 0; i < 24; i++) {
    if (i % 6 === 5) await page.waitForTimeout(700); // a surge in waves, not one spike
    try {
      run('curl', ['-sS', '-o', '/dev/null', '--cacert', env('EG_GATEWAY_CA'), '-X', 'POST',
        `${URL_}/edge/client/v1/enroll?method=ott&token=not-a-token-${i}`]);
    } catch (_) { /* the refusal is the point */ }
  }
  // Devices arriving: the spare tokens the Rust test made, redeemed with curl.
  for (const [i, t] of (process.env.EG_SURGE_TOKENS || '').split(',').filter(Boolean).entries()) {
    run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-subj', `/CN=surge-${i}`, '-keyout', `surge-${i}.key`, '-out', `surge-${i}.csr`]);
    run('curl', ['-sS', '--fail-with-body', '-o', '/dev/null', '--cacert', env('EG_GATEWAY_CA'),
      '-H', 'Content-Type: application/x-pem-file', '--data-binary', `@surge-${i}.csr`,
      `${URL_}/edge/client/v1/enroll?method=ott&token=${t}`]);
    await page.waitForTimeout(300);
  }
  await page.locator('#legend-enrollments').getByText(/ott [1-9]/).waitFor({ timeout: 10000 }).catch(() => {});
  const refusals = page.getByRole('img', { name: 'Refusals per second, by error code' });
  await page.locator('#legend-refusals').getByText('INVALID_ENROLLMENT_TOKEN').waitFor({ timeout: 10000 });
  await page.waitForTimeout(3500);
  assert.ok(await refusals.locator('polyline').count() > 0, 'refusals are drawn');
  await shot('live');
  ok('the live view draws refusals as they arrive');

  // ---- sign out: back to the prompt, no data ----
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to the enrollgate console' }).waitFor();
  assert.equal(await page.getByRole('table').count(), 0);
  ok('signing out leaves no data on the page');
  await admin.close();

  // ---- sign in with the admin certificate the browser presents ----
  const withCert = await context({ clientCertificates: [adminCert] });
  page = await withCert.newPage();
  await page.goto(`${URL_}/console/`);
  await page.getByRole('button', { name: 'Sign in with my certificate' }).click();
  await page.getByRole('heading', { name: 'Identities' }).waitFor();
  await rowOf('phone-1').waitFor();
  ok('the admin certificate signs in');
  await withCert.close();

  // ---- another site's page, in a browser holding the admin certificate ----
  const evil = await context({ clientCertificates: [adminCert] });
  page = await evil.newPage();
  // Another site's page (served by the test itself, without our CSP), whose scripts make
  // the browser call the gateway: the browser attaches the admin certificate to them.
  await evil.route('https://evil.example/**', (r) => r.fulfill({ contentType: 'text/html', body: '<!doctype html><title>another site</title><p>another site</p>' }));
  await page.goto('https://evil.example/');
  const target = `${URL_}/edge/management/v1/identities`;
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url() === target),
    page.evaluate((u) => fetch(u, { mode: 'no-cors', credentials: 'include' }).catch(() => null), target),
  ]);
  assert.equal(resp.status(), 403);
  const postTarget = `${URL_}/edge/management/v1/console/sessions/cert`;
  const [post] = await Promise.all([
    page.waitForResponse((r) => r.url() === postTarget),
    page.evaluate((u) => fetch(u, { method: 'POST', mode: 'no-cors', credentials: 'include', body: 'x' }).catch(() => null), postTarget),
  ]);
  assert.equal(post.status(), 403);
  ok('cross-site requests carrying the admin certificate are refused with 403');
  await evil.close();

  console.log('console: all checks passed');
  await browser.close();
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  try { if (page) await page.screenshot({ path: process.env.EG_FAILURE_SHOT || join(WORK, 'failure.png') }); } catch (_) { /* closed */ }
  await browser.close();
  process.exit(1);
}
writeFileSync(join(WORK, 'done'), 'ok\n');
