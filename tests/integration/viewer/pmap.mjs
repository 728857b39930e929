// Open a study in OHIF (open_study.mjs), load spinegate's T2 Parametric Map
// from the study browser, screenshot the viewport before and after, and
// report console errors as JSON.
// usage: node pmap.mjs BASE_URL STUDY_UID OUT_DIR
import { inStudy, openDerived } from './open_study.mjs';

const [, , base, study, out] = process.argv;
await inStudy(base, study, async (page, result) => {
  const canvas = page.locator('[data-cy="viewport-pane"] canvas').first();
  await page.waitForTimeout(2000);
  await canvas.screenshot({ path: `${out}/pmap_before.png` });
  const thumbnails = page.locator('[data-cy^="study-browser-thumbnail"]');
  result.thumbnails = await thumbnails.allInnerTexts();
  await openDerived(page, result, thumbnails.filter({ hasText: /T2 map|PMAP/ }).first(), 'pmap', 15000);
  // The map's float frames take longer to load and colour than a SEG's
  // (observed past 8 s on a loaded 2-core machine).
  await page.waitForTimeout(14000);
  await canvas.screenshot({ path: `${out}/pmap_after.png` });
  await page.screenshot({ path: `${out}/pmap_viewer.png` });
  result.steps.push('screenshots');
});
