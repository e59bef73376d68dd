// The view in the URL hash: what is written is read back; defaults stay out of it.
import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_TRAIL_MIN, formatHash, parseHash } from "../../static/lib/hash.js";

const VIEW = { zoom: 11, lat: 40.75, lon: -73.95, replay: false, view: "now", start: null, end: null, heat: false,
               colorBy: "speed", staleMs: 300000, defaultStaleMs: 300000, trailMin: DEFAULT_TRAIL_MIN, where: [] };

test("a default view writes only the position, the mode and the view", () => {
  assert.equal(formatHash(VIEW), "z=11&lat=40.75000&lon=-73.95000&mode=live&view=now");
});

test("every setting written is read back", () => {
  const view = { ...VIEW, zoom: 16, lat: -33.123456, lon: 151.2, replay: true, view: "density", start: 1000,
                 end: 901000, heat: true, colorBy: "fence", staleMs: 90000, trailMin: 2.5,
                 where: ["vendor_id:VTS", "passengerCount:>=3", "rate_code:1|2", "note:a&b=c#d"] };
  const h = parseHash(formatHash(view));
  assert.deepEqual(h, { z: 16, lat: -33.12346, lon: 151.2, start: 1000, end: 901000, mode: "replay", heat: true,
                        color: "fence", view: "density", where: view.where, stale: 1.5, trail: 2.5 });
});

test("a live view carries no time window, even with one set", () => {
  const h = parseHash(formatHash({ ...VIEW, start: 1, end: 2 }));
  assert.equal(h.start, null);
  assert.equal(h.end, null);
  assert.equal(parseHash(formatHash({ ...VIEW, replay: true })).start, null); // replay before its window is known
});

test("what a hash cannot mean is dropped: bad numbers, filters without a field", () => {
  const h = parseHash("z=abc&lat=&lon=1e999&stale=5&where=nocolon&where=a:1");
  assert.deepEqual([h.z, h.lat, h.lon, h.stale], [null, null, null, 5]);
  assert.deepEqual(h.where, ["a:1"]);
  assert.equal(h.heat, false);
  assert.equal(parseHash("").mode, null);
});
