// Open a study in OHIF (open_study.mjs), load spinegate's T2 Parametric Map
// from the study browser, screenshot the viewport before and after, and
// report console errors as JSON.
// usage: node pmap.mjs BASE_URL STUDY_UID OUT_DIR
import { inStudy, openDerived, waitForColour } from './open_study.mjs';

const [, , base, study, out] = process.argv;
await inStudy(base, study, async (page, result) => {
  const canvas = page.locator('[data-cy="viewport-pane"] canvas').first();
  await page.waitForTimeout(2000);
  await canvas.screenshot({ path: `${out}/pmap_before.png` });
  const thumbnails = page.locator('[data-cy^="study-browser-thumbnail"]');
  result.thumbnails = await thumbnails.allInnerTexts();
  await openDerived(page, result, thumbnails.filter({ hasText: /T2 map|PMAP/ }).first(), 'pmap', 5000);
  // OHIF (this build) loads the map but, in about half the runs, does not
  // redraw the viewport until the user scrolls (seen more often the longer
  // the stack has been open). So, as a reader would: wait, then scroll one
  // slice down and back up, up to six times.
  const box = await canvas.boundingBox();
  let waited = await waitForColour(page, canvas, 1000, 5000);
  for (let nudge = 1; waited < 0 && nudge <= 6; nudge++) {
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.wheel(0, 100);
    await page.waitForTimeout(400);
    await page.mouse.wheel(0, -100);
    result.steps.push(`scrolled-${nudge}`);
    waited = await waitForColour(page, canvas, 1000, 5000);
  }
  result.steps.push(waited < 0 ? 'not-coloured' : 'coloured');
  await page.waitForTimeout(1000);
  await canvas.screenshot({ path: `${out}/pmap_after.png` });
  await page.screenshot({ path: `${out}/pmap_viewer.png` });
  result.steps.push('screenshots');
});
