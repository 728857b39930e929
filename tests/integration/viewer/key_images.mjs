// Open a study in the OHIF viewer (open_study.mjs), show spinegate's key
// image (Secondary Capture) in the viewport and its PDF report in OHIF's PDF
// viewport; report as JSON what the page showed: console errors, the PDF
// object's URL and the first bytes the viewer fetched from it.
// usage: node key_images.mjs BASE_URL STUDY_UID OUT_DIR
import { inStudy } from './open_study.mjs';

const [, , base, study, out] = process.argv;
await inStudy(base, study, async (page, result) => {
  result.pdf = null;
  const keyImages = page.locator('[data-cy="study-browser-thumbnail"]', { hasText: 'key images' }).first();
  await keyImages.dblclick({ timeout: 60000 });
  await page.waitForTimeout(6000);
  await page.locator('[data-cy="viewport-pane"] canvas').first().screenshot({ path: `${out}/key_image.png` });
  result.steps.push('key-image');
  const report = page.locator('[data-cy="study-browser-thumbnail-no-image"]', { hasText: 'DOC' }).first();
  await report.dblclick({ timeout: 60000 });
  const pdf = page.locator('[data-cy="viewport-pane"] object[type="application/pdf"]').first();
  await pdf.waitFor({ state: 'attached', timeout: 60000 });
  // The viewport mounts the object first and sets its URL once it has it.
  await page.waitForFunction(() => {
    const o = document.querySelector('[data-cy="viewport-pane"] object[type="application/pdf"]');
    return o && o.getAttribute('data');
  }, null, { timeout: 60000 });
  await page.waitForTimeout(2000);
  const url = await pdf.getAttribute('data');
  result.pdf = await page.evaluate(async (u) => {
    const r = await fetch(u);
    const bytes = new Uint8Array(await r.arrayBuffer());
    return { url: u, status: r.status, type: r.headers.get('content-type'), length: bytes.length,
             head: String.fromCharCode(...bytes.slice(0, 5)) };
  }, url);
  await page.screenshot({ path: `${out}/pdf_viewport.png` });
  result.steps.push('pdf');
});
