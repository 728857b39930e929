// Open a study in OHIF (open_study.mjs), load spinegate's T2 Parametric Map
// from the study browser, screenshot the viewport before and after, and
// report console errors as JSON.
// usage: node pmap.mjs BASE_URL STUDY_UID OUT_DIR
import { openStudy } from './open_study.mjs';

const [, , base, study, out] = process.argv;
const { browser, page, result } = await openStudy(base, study);
try {
  const canvas = page.locator('[data-cy="viewport-pane"] canvas').first();
  await page.waitForTimeout(2000);
  await canvas.screenshot({ path: `${out}/pmap_before.png` });
  const thumbnails = page.locator('[data-cy^="study-browser-thumbnail"]');
  result.thumbnails = await thumbnails.allInnerTexts();
  const map = thumbnails.filter({ hasText: /T2 map|PMAP/ }).first();
  await map.dblclick({ timeout: 60000 });
  result.steps.push('pmap-opened');
  try {
    await page.locator('[data-cy="yes-hydrate-btn"]').click({ timeout: 15000 });
    result.steps.push('hydrated');
  } catch (e) {
    result.steps.push('no-hydrate-prompt');
  }
  await page.waitForTimeout(8000);
  await canvas.screenshot({ path: `${out}/pmap_after.png` });
  await page.screenshot({ path: `${out}/pmap_viewer.png` });
  result.steps.push('screenshots');
} catch (e) {
  result.errors.push(`driver: ${e}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
