// Lighthouse on a form showing its validation errors: the CLI can only GET a page, and
// the errors come in the answer to a POST. So: open the form in Chromium (puppeteer-core,
// Lighthouse's own dependency), submit it empty, and audit the page the browser then
// shows in Lighthouse's snapshot mode (accessibility, best practices, SEO; no speed).
//   node form-errors.mjs URL mobile|desktop [COOKIE]   prints Lighthouse's result as JSON
import puppeteer from "puppeteer-core";
import {desktopConfig, snapshot} from "lighthouse";

const [url, formFactor, cookie] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROME_PATH || "/usr/bin/chromium",
  args: (process.env.CHROME_FLAGS || "--headless").split(/\s+/).filter(Boolean),
});
try {
  const page = await browser.newPage();
  // The screens of Lighthouse's presets (snapshot mode emulates none).
  await page.setViewport(formFactor === "desktop"
    ? {width: 1350, height: 940, deviceScaleFactor: 1}
    : {width: 412, height: 823, deviceScaleFactor: 1.75, isMobile: true, hasTouch: true});
  if (cookie) await page.setExtraHTTPHeaders({Cookie: cookie});
  await page.goto(url);
  const [response] = await Promise.all([
    page.waitForNavigation(),
    page.click("main form[method=post] button[type=submit]"),
  ]);
  if (response.status() !== 400) throw new Error(`the empty form was answered ${response.status()}, not 400`);
  const result = await snapshot(page, formFactor === "desktop" ? {config: desktopConfig} : {});
  process.stdout.write(JSON.stringify(result.lhr));
} finally {
  await browser.close();
}
