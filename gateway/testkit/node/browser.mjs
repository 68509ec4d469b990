// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core; Playwright never
// downloads a browser here) through an OpenID login at oidc-provider's development pages. Started
// by gateway/testkit/src/browser.rs as `node browser.mjs <job.json>`:
//
//   { "chromium": "/usr/bin/chromium", "start_url": "...", "login": "alice" | null,
//     "logout_url": "..." | null, "screenshot_dir": "..." | null, "timeout_ms": 20000 }
//
// Prints one line `RESULT <json>` to stdout: { "login": <outcome>, "logout": <outcome> | null }
// or { "error": "...", "partial": <outcome> }, where an outcome is { final_url, status,
// body_text, html, cookies: [{ name, value, domain, path, httpOnly, secure, sameSite }], steps }.
// Logs go to stderr.
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const log = (...args) => console.error('[browser]', ...args);
const timeout = job.timeout_ms ?? 20000;

// The network is closed: without these Chromium waits on background connections.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

const loopback = (hostname) => hostname === '127.0.0.1' || hostname === 'localhost'
  || hostname === '[::1]' || hostname.endsWith('.localhost');

let shots = 0;
async function shot(page, label) {
  if (!job.screenshot_dir) return;
  mkdirSync(job.screenshot_dir, { recursive: true });
  shots += 1;
  const path = join(job.screenshot_dir, `${String(shots).padStart(2, '0')}-${label}.png`);
  await page.screenshot({ path, fullPage: true }).catch((err) => log('screenshot failed', err.message));
}

async function settle(page) {
  await page.waitForLoadState('load');
  // A page may navigate by itself (oidc-provider's form_post and logout auto-submit pages).
  await page.waitForLoadState('networkidle').catch(() => {});
}

async function has(page, selector) {
  return (await page.locator(selector).count()) > 0;
}

// Clicks and waits for the navigation that follows.
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(selector)]);
}

async function outcome(page, context, state, steps) {
  const bodyText = await page.locator('body').innerText().catch(() => '');
  const html = await page.content().catch(() => '');
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name,
    value: c.value,
    domain: c.domain,
    path: c.path,
    httpOnly: c.httpOnly,
    secure: c.secure,
    sameSite: c.sameSite,
  }));
  return {
    final_url: page.url(),
    status: state.lastStatus,
    body_text: bodyText,
    html,
    cookies,
    steps: [...steps],
  };
}

// Goes to `url` and walks the provider's pages: login form, consent, logout confirmation.
async function walk(page, state, url, { login, logout }, label) {
  const steps = [];
  steps.push(`goto ${url}`);
  await page.goto(url, { waitUntil: 'load' });
  for (let i = 0; i < 20; i += 1) {
    await settle(page);
    await shot(page, `${label}-${i}`);
    // A page's own sign-in form (the console's): fill each field once, submit.
    if (job.form && !state.formSubmitted && await has(page, Object.keys(job.form.fields)[0])) {
      steps.push(`form at ${page.url()}`);
      for (const [selector, value] of Object.entries(job.form.fields)) {
        await page.fill(selector, value);
      }
      state.formSubmitted = true;
      await submit(page, job.form.submit);
      continue;
    }
    if (login && await has(page, 'input[name="login"]')) {
      steps.push(`login form at ${page.url()}`);
      await page.fill('input[name="login"]', login);
      await page.fill('input[name="password"]', 'x');
      await submit(page, 'button[type="submit"]');
      continue;
    }
    if (await has(page, 'input[name="prompt"][value="consent"]')) {
      steps.push(`consent form at ${page.url()}`);
      await submit(page, 'button[type="submit"]:has-text("Continue")');
      continue;
    }
    if (logout && await has(page, 'form[id="op.logoutForm"]')) {
      steps.push(`logout confirmation at ${page.url()}`);
      await submit(page, 'button[name="logout"][value="yes"]');
      continue;
    }
    break;
  }
  steps.push(`ended at ${page.url()} (${state.lastStatus})`);
  return steps;
}

const browser = await chromium.launch({
  executablePath: job.chromium,
  headless: true,
  args: ARGS,
  timeout,
});
let page;
let context;
const state = { lastStatus: null };
try {
  context = await browser.newContext();
  context.setDefaultTimeout(timeout);
  // Nothing leaves the machine (the dev pages import a web font).
  await context.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url());
    return loopback(hostname) ? route.continue() : route.abort();
  });
  page = await context.newPage();
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      state.lastStatus = response.status();
    }
  });
  page.on('console', (msg) => log('console', msg.type(), msg.text()));

  const loginSteps = await walk(page, state, job.start_url, { login: job.login }, 'login');
  const loginOutcome = await outcome(page, context, state, loginSteps);
  let logoutOutcome = null;
  if (job.logout_url) {
    const logoutSteps = await walk(page, state, job.logout_url, { logout: true }, 'logout');
    logoutOutcome = await outcome(page, context, state, logoutSteps);
  }
  process.stdout.write(`RESULT ${JSON.stringify({ login: loginOutcome, logout: logoutOutcome })}\n`);
} catch (err) {
  log('failed', err);
  const partial = page ? await outcome(page, context, state, []).catch(() => null) : null;
  if (page) await shot(page, 'error');
  process.stdout.write(`RESULT ${JSON.stringify({ error: String(err?.stack ?? err), partial })}\n`);
  process.exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
