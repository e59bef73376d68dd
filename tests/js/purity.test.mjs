// The helpers in static/lib/ stay pure: they import only each other and use no DOM, browser or Leaflet global,
// so they load (and are tested) in Node as they are.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";

const LIB = new URL("../../static/lib/", import.meta.url);
const files = readdirSync(LIB).filter((f) => f.endsWith(".js"));
const code = (f) => readFileSync(new URL(f, LIB), "utf8").replace(/\/\/.*$/gm, "").replace(/\/\*[\s\S]*?\*\//g, "");

test("every helper module imports only its siblings", () => {
  assert.ok(files.length >= 5, String(files));
  for (const f of files) {
    for (const [, spec] of code(f).matchAll(/(?:import|export)\s[^;"']*?from\s*"([^"]+)"/g)) {
      assert.match(spec, /^\.\/[\w-]+\.js$/, `${f} imports ${spec}`);
    }
  }
});

test("no helper module touches the page, the browser or Leaflet", () => {
  const globals = /\b(document|window|location|history|fetch|EventSource|sessionStorage|L)\s*[.(]/;
  for (const f of files) assert.doesNotMatch(code(f), globals, f);
});

test("every helper module loads in Node", async () => {
  for (const f of files) assert.ok(await import(new URL(f, LIB)), f);
});
