// Open a study in OHIF (open_study.mjs), load spinegate's T2 Parametric Map
// from the study browser, screenshot the viewport before and after, and
// report console errors as JSON.
// usage: node pmap.mjs BASE_URL STUDY_UID OUT_DIR
import { openDerived, openStudy } from './open_study.mjs';

const [, , base, study, out] = process.argv;
const { browser, page, result } = await openStudy(base, study);
try {
  const canvas = page.locator('[data-cy="viewport-pane"] canvas').first();
  await page.waitForTimeout(2000);
  await canvas.screenshot({ path: `${out}/pmap_before.png` });
  const thumbnails = page.locator('[data-cy^="study-browser-thumbnail"]');
  result.thumbnails = await thumbnails.allInnerTexts();
  await openDerived(page, result, thumbnails.filter({ hasText: /T2 map|PMAP/ }).first(), 'pmap', 15000);
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
