// Drives OHIF (served by the listener at /viewer) in Debian's headless Chromium with the npm
// package playwright-core, for tests/e2e/test_viewer.py. One run, two pages of one app load:
//   1. the viewer on the study (/viewer/viewer?StudyInstanceUIDs=..., a deep link): waits
//      until the viewport's canvas holds an image (its pixels vary), then screenshots it;
//   2. the study list (/viewer/): waits for the row of the stored study and reports its text.
// Every wait is bounded; a step that times out is reported, never thrown past the report, so
// the test can say what failed and still has the screenshots. Input: one JSON argument
// {playwright, chromium, base, study, patient, outDir, timeoutMs,
// minSpread, token (optional)}. Output: one JSON line.
'use strict';

const path = require('path');

const options = JSON.parse(process.argv[2]);
const { chromium } = require(options.playwright);

// Chromium as root in a sandboxless container, on a machine with no outside network: no
// sandbox, no GPU (WebGL falls back to SwiftShader), and none of its background connections.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--enable-unsafe-swiftshader',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// OHIF's first-visit tours (shepherd.js) would float over the viewport.
const HIDE_TOURS = '.shepherd-element, .shepherd-modal-overlay-container { display: none !important; }';

// In the page: the standard deviation of the luminance of the canvas' middle half, 0..255 (the
// corners carry OHIF's text overlays, which are DOM, not canvas, but stay out anyway).
function canvasSpread(selector) {
  const canvas = document.querySelector(selector);
  if (!canvas || !canvas.width || !canvas.height) return -1;
  const context = canvas.getContext('2d');
  if (!context) return -2;
  const w = Math.floor(canvas.width / 2);
  const h = Math.floor(canvas.height / 2);
  const { data } = context.getImageData(Math.floor(w / 2), Math.floor(h / 2), w, h);
  let n = 0;
  let sum = 0;
  let squares = 0;
  for (let i = 0; i < data.length; i += 16) {
    const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    n += 1;
    sum += y;
    squares += y * y;
  }
  const mean = sum / n;
  return Math.sqrt(Math.max(0, squares / n - mean * mean));
}

async function main() {
  const report = { steps: {}, console: [], failedRequests: [], dicomweb: [] };
  const started = Date.now();
  const elapsed = () => Date.now() - started;
  const browser = await chromium.launch({
    executablePath: options.chromium,
    headless: true,
    args: ARGS,
    timeout: options.timeoutMs,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.setDefaultTimeout(options.timeoutMs);
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') {
        report.console.push(`${m.type()}: ${m.text().slice(0, 300)}`);
      }
    });
    page.on('requestfailed', (r) => {
      report.failedRequests.push(`${r.url().slice(0, 200)}: ${r.failure()?.errorText}`);
    });
    page.on('response', (r) => {
      const url = r.url();
      if (url.includes('/dicom-web/') || r.status() >= 400) {
        report.dicomweb.push(`${r.status()} ${url.slice(options.base.length, 240)}`);
      }
    });

    // 1. The viewer on the study, opened by its deep link (the server answers index.html).
    const view = {};
    report.steps.viewer = view;
    // A bearer token, when the server wants one, rides as OHIF's ?token= (it sends it as
    // Authorization on its DICOMweb requests and drops it from the address).
    const token = options.token ? `&token=${encodeURIComponent(options.token)}` : '';
    await page.goto(
      `${options.base}/viewer/viewer?StudyInstanceUIDs=${encodeURIComponent(options.study)}${token}`,
      { waitUntil: 'domcontentloaded' },
    );
    await page.addStyleTag({ content: HIDE_TOURS });
    const selector = 'canvas.cornerstone-canvas';
    const spread = `(${canvasSpread})(${JSON.stringify(selector)})`;
    try {
      await page.locator(selector).first().waitFor({ state: 'visible' });
      // The canvas is there before its image: wait until its middle holds one.
      await page.waitForFunction(`${spread} > ${options.minSpread}`, null, { polling: 250 });
      view.ok = true;
    } catch (error) {
      view.ok = false;
      view.error = String(error.message || error).split('\n')[0];
    }
    view.spreadInPage = await page.evaluate(spread).catch(() => null);
    // OHIF flags series whose metadata it finds wanting (irregular spacing, not a volume...)
    // with a warning button on the thumbnail; its tooltip lists the messages.
    const warnings = page.locator('button[id^="display-set-tooltip"]');
    view.seriesWarnings = [];
    for (let i = 0; i < (await warnings.count()); i += 1) {
      await warnings.nth(i).hover({ force: true, timeout: 5000 }).catch(() => {});
      const tip = page.locator('[data-radix-popper-content-wrapper]').first();
      await tip.waitFor({ state: 'visible', timeout: 5000 }).catch(() => {});
      view.seriesWarnings.push((await tip.innerText().catch(() => '?')).replace(/\s+/g, ' '));
    }
    await page.mouse.move(0, 0);
    view.ms = elapsed();
    view.screenshot = path.join(options.outDir, 'viewer.png');
    await page.screenshot({ path: view.screenshot });
    const canvas = page.locator(selector).first();
    if (await canvas.count()) {
      view.viewportScreenshot = path.join(options.outDir, 'viewport.png');
      await canvas.screenshot({ path: view.viewportScreenshot }).catch((error) => {
        view.viewportError = String(error.message || error).split('\n')[0];
        delete view.viewportScreenshot;
      });
    }

    // 2. The study list, reached inside the app as its own links do (history and popstate,
    // which react-router follows): loading OHIF's 17 MB bundle once is the slow part.
    const list = {};
    report.steps.studyList = list;
    const listStarted = Date.now();
    await page.evaluate(() => {
      window.history.pushState({}, '', '/viewer/');
      window.dispatchEvent(new PopStateEvent('popstate', { state: {} }));
    });
    try {
      const cell = page.getByText(options.patient, { exact: false }).first();
      await cell.waitFor({ state: 'visible' });
      list.rowText = await cell.evaluate((el) => {
        const row = el.closest('tr, [role="row"]') || el.parentElement?.parentElement || el;
        return row.innerText;
      });
      list.ok = true;
    } catch (error) {
      list.ok = false;
      list.error = String(error.message || error).split('\n')[0];
    }
    list.ms = Date.now() - listStarted;
    list.screenshot = path.join(options.outDir, 'study-list.png');
    await page.screenshot({ path: list.screenshot });
  } finally {
    await browser.close();
  }
  report.ms = elapsed();
  return report;
}

main().then(
  (report) => process.stdout.write(`${JSON.stringify(report)}\n`),
  (error) => {
    process.stdout.write(`${JSON.stringify({ fatal: String(error.stack || error) })}\n`);
    process.exitCode = 1;
  },
);
