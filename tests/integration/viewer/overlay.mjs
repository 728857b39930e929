// Open a study in the OHIF viewer (open_study.mjs), screenshot the viewport
// before and after loading the SEG, and report console errors as JSON.
// usage: node overlay.mjs BASE_URL STUDY_UID OUT_DIR
import { inStudy, openDerived } from './open_study.mjs';

const [, , base, study, out] = process.argv;
await inStudy(base, study, async (page, result) => {
  const viewport = page.locator('[data-cy="viewport-pane"]').first();
  const canvas = page.locator('[data-cy="viewport-pane"] canvas').first();
  // Scroll to the central slice (the stack opens on its first, lateral one).
  const box = await canvas.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  for (let i = 0; i < 7; i++) {
    await page.mouse.wheel(0, 100);
    await page.waitForTimeout(400);
  }
  await page.waitForTimeout(2000);
  await canvas.screenshot({ path: `${out}/before.png` });
  await openDerived(page, result, page.locator('[data-cy="study-browser-thumbnail-no-image"]', { hasText: 'SEG' }).first(),
                    'seg');
  await page.waitForTimeout(8000);
  // Loading the SEG jumps to its first segmented slice; go back to the centre.
  const shown = await page.locator('[data-cy="viewport-overlay-bottom-right"]').first().innerText().catch(() => '');
  const m = shown.match(/\((\d+)\/(\d+)\)/);
  if (m) {
    const steps = Math.round(Number(m[2]) / 2) - Number(m[1]);
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    for (let i = 0; i < Math.abs(steps); i++) {
      await page.mouse.wheel(0, steps > 0 ? 100 : -100);
      await page.waitForTimeout(400);
    }
    await page.waitForTimeout(2000);
  }
  result.steps.push(`slice ${shown.trim()}`);
  await canvas.screenshot({ path: `${out}/after.png` });
  await page.screenshot({ path: `${out}/viewer.png` });
  result.steps.push('screenshots');
});
