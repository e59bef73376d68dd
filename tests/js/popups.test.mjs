// Popup contents: the preset's fields in its order, whatever the preset, escaped.
import assert from "node:assert/strict";
import { test } from "node:test";

import { propertiesTable, trackTable } from "../../static/lib/popups.js";

const CONFIG = { schema: { track: "object_id", time: "timestamp", lon: "lon", lat: "lat" },
                 fields: { object_id: "string", timestamp: "time", lon: "float", lat: "float", altitude: "int",
                           speed_mps: "float", geohash: "string", geofences: "string" } };

test("a track's popup lists the preset's fields in order, then other attributes", () => {
  const f = { geometry: { coordinates: [-73.5, 40.25] },
              properties: { track: "<b>", time: 1357000000000, speed_mps: 3.14159, geofences: [],
                            attributes: { altitude: 1200, extra: "x" } } };
  const html = trackTable(f, CONFIG, { stale: true, trailMin: 5 });
  const fields = [...html.matchAll(/data-field="([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual(fields, ["object_id", "timestamp", "lon", "lat", "altitude", "speed_mps", "geofences", "extra"]);
  const cell = (name) => new RegExp(`data-field="${name}"><td>${name}</td><td>([^<]*)</td>`).exec(html)[1];
  assert.equal(cell("object_id"), "&#60;b&#62;");
  assert.equal(cell("timestamp"), "2013-01-01T00:26:40Z");
  assert.equal(cell("lat"), "40.25");
  assert.equal(cell("speed_mps"), "3.14");
  assert.equal(cell("geofences"), "–");
  assert.equal(cell("altitude"), "1200");
  assert.ok(html.startsWith("<b>&#60;b&#62;</b> <span class=\"stale-tag\">stale</span>"));
  assert.ok(html.endsWith("trail: last 5 min</p>"));
  assert.ok(!trackTable(f, CONFIG, { stale: false, trailMin: 5 }).includes("stale-tag"));
});

test("an observation's popup lists its set properties, lists joined, escaped", () => {
  const html = propertiesTable({ a: 1, b: null, c: ["x", "y"], d: "<i>" });
  assert.equal(html, '<table class="popup-table"><tr><td>a</td><td>1</td></tr><tr><td>c</td><td>x, y</td></tr>' +
                     "<tr><td>d</td><td>&#60;i&#62;</td></tr></table>");
});
