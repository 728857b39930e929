// Shared by the viewer scripts: headless Debian Chromium (playwright-core,
// never a downloaded browser) with OHIF open on one study, console errors
// collected in result.errors, the "investigational use" banner dismissed.
import { chromium } from 'playwright-core';

export async function openStudy(base, study) {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
  });
  const result = { errors: [], steps: [] };
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => { if (m.type() === 'error') result.errors.push(m.text()); });
  page.on('pageerror', (e) => result.errors.push(String(e)));
  try {
    await page.goto(`${base}/viewer?StudyInstanceUIDs=${study}`, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('[data-cy="viewport-pane"] canvas', { timeout: 120000 });
    result.steps.push('viewport');
    await page.waitForTimeout(4000);
    try {
      await page.getByText('Confirm and hide').click({ timeout: 5000 });
    } catch (e) {}
  } catch (e) {
    result.errors.push(`driver: ${e}`);
  }
  return { browser, page, result };
}

// Poll `locator`'s screenshot until more than `minPixels` of its central
// 80 % are coloured (channel spread > 60, as the tests count them) or
// `timeoutMs` passes; returns the milliseconds waited, or -1. The PNG is
// decoded in the page, so no image library is needed here.
export async function waitForColour(page, locator, minPixels, timeoutMs) {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    const png = (await locator.screenshot()).toString('base64');
    const coloured = await page.evaluate(async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const context = canvas.getContext('2d');
      context.drawImage(bitmap, 0, 0);
      const { width: w, height: h } = bitmap;
      const { data } = context.getImageData(0, 0, w, h);
      let count = 0;
      for (let y = Math.floor(h / 10); y < h - Math.floor(h / 10); y++) {
        for (let x = Math.floor(w / 10); x < w - Math.floor(w / 10); x++) {
          const i = 4 * (y * w + x);
          if (Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 60) count++;
        }
      }
      return count;
    }, png);
    if (coloured > minPixels) return Date.now() - start;
    await page.waitForTimeout(1000);
  }
  return -1;
}

// Double-click a derived series' thumbnail (SEG, Parametric Map) and accept
// OHIF's offer to hydrate it onto its source images, if it asks; the steps
// are recorded as `${name}-opened` and 'hydrated' / 'no-hydrate-prompt'.
export async function openDerived(page, result, thumbnail, name, hydrateTimeoutMs = 20000) {
  await thumbnail.dblclick({ timeout: 60000 });
  result.steps.push(`${name}-opened`);
  try {
    await page.locator('[data-cy="yes-hydrate-btn"]').click({ timeout: hydrateTimeoutMs });
    result.steps.push('hydrated');
  } catch (e) {
    result.steps.push('no-hydrate-prompt');
  }
}

// The viewer scripts' frame: open the study, run `body(page, result)`, record
// a failure as a driver error, close the browser and print the result as
// JSON (the test reads it from stdout).
export async function inStudy(base, study, body) {
  const { browser, page, result } = await openStudy(base, study);
  try {
    await body(page, result);
  } catch (e) {
    result.errors.push(`driver: ${e}`);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
}
