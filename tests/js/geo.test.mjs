// Longitude unwrapping, the view's bbox and distances.
import assert from "node:assert/strict";
import { test } from "node:test";

import { bboxBounds, heading, metres, near, stepSpeeds, viewBBox, wrap } from "../../static/lib/geo.js";

function* lons(n = 2000) { // a fixed pseudo-random sample, ends and turns included
  yield* [-540, -360, -180, -179.999, 0, 179.999, 180, 360, 540];
  let x = 12345;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; yield (x / 2147483648) * 2000 - 1000; }
}
const turns = (d) => Math.abs(d / 360 - Math.round(d / 360)) < 1e-9;

test("wrap brings a longitude into [-180, 180) by whole turns", () => {
  for (const lon of lons()) {
    const w = wrap(lon);
    assert.ok(w >= -180 && w < 180, `${lon} -> ${w}`);
    assert.ok(turns(w - lon), `${lon} -> ${w}`);
  }
  assert.equal(wrap(180), -180);
  assert.equal(wrap(-190), 170);
});

test("near puts a longitude within half a turn of the centre, by whole turns", () => {
  for (const lon of lons(300)) {
    for (const centre of [-200, -179, 0, 179, 185, 540]) {
      const n = near(lon, centre);
      assert.ok(Math.abs(n - centre) <= 180 + 1e-9 && turns(n - lon), `${lon} near ${centre} -> ${n}`);
    }
  }
});

test("the view's bbox: wrapped across the antimeridian, the world when a turn is in view, latitudes clipped", () => {
  assert.deepEqual(viewBBox(-74.1, 40.6, -73.8, 40.9), [-74.1, 40.6, -73.8, 40.9]);
  assert.deepEqual(viewBBox(170, -10, 190, 10), [170, -10, -170, 10]);
  assert.deepEqual(viewBBox(-190, -10, -170, 10), [170, -10, -170, 10]);
  assert.deepEqual(viewBBox(-300, -95, 100, 95), [-180, -90, 180, 90]);
});

test("an extent across the antimeridian becomes bounds whose east lies past 180", () => {
  assert.deepEqual(bboxBounds([170, -10, -170, 10]), [[-10, 170], [10, 190]]);
  assert.deepEqual(bboxBounds([-74, 40, -73, 41]), [[40, -74], [41, -73]]);
});

test("metres: a degree of latitude, a quarter meridian, and the antimeridian crossed the short way", () => {
  const degree = 2 * Math.PI * 6371008.8 / 360;
  assert.ok(Math.abs(metres([10, 0], [10, 1]) - degree) < 1e-6);
  assert.ok(Math.abs(metres([0, 0], [0, 90]) - 90 * degree) < 1e-3);
  assert.ok(Math.abs(metres([179.5, 0], [-179.5, 0]) - degree) < 1e-6);
  assert.equal(metres([3, 4], [3, 4]), 0);
});

test("step speeds: distance over time per step, 0 when no time passed", () => {
  const degree = 2 * Math.PI * 6371008.8 / 360;
  const speeds = stepSpeeds([[0, 0], [0, 1], [0, 1], [0, 2]], [0, 1000, 1000, 1000]);
  assert.equal(speeds.length, 3);
  assert.ok(Math.abs(speeds[0] - degree) < 1e-6);
  assert.deepEqual(speeds.slice(1), [0, 0]);
  assert.deepEqual(stepSpeeds([[0, 0]], [0]), []);
});

test("a heading is brought into [0, 360); none is null", () => {
  assert.equal(heading(-90), 270);
  assert.equal(heading(720), 0);
  assert.equal(heading(359.5), 359.5);
  for (const h of [null, undefined, NaN, Infinity, "90"]) assert.equal(heading(h), null);
});
