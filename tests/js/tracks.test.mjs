// The now view's tracks: the data's clock, staleness, and how an arrow looks.
import assert from "node:assert/strict";
import { test } from "node:test";

import { fenceColor, speedColor } from "../../static/lib/colors.js";
import { advanceClock, isStale, look, trackOf } from "../../static/lib/tracks.js";

const at = (time, more = {}) => ({ properties: { time, ...more } });

test("the clock is the newest report time seen, and never goes back", () => {
  assert.equal(advanceClock(0, [at(5), at(9), at(7)]), 9);
  assert.equal(advanceClock(20, [at(5)]), 20);
  assert.equal(advanceClock(3, [at("9"), { properties: null }, { properties: {} }]), 3);
});

test("stale: no report for more than staleMs before the clock", () => {
  assert.equal(isStale({ time: 1000 }, 4000, 3000), false);
  assert.equal(isStale({ time: 999 }, 4000, 3000), true);
  assert.equal(isStale({}, 4000, 3000), false);
});

test("an arrow is coloured by speed or by fence, turned by its heading, faded when stale", () => {
  const props = { time: 0, speed_mps: 12, heading_deg: -45, geofences: ["jfk"] };
  assert.deepEqual(look(props, { clock: 10, staleMs: 5, colorBy: "speed" }),
                   { heading: 315, color: speedColor(12), stale: true });
  assert.deepEqual(look(props, { clock: 0, staleMs: 5, colorBy: "fence" }),
                   { heading: 315, color: fenceColor(["jfk"]), stale: false });
  assert.equal(look({ time: 0 }, { clock: 0, staleMs: 5, colorBy: "speed" }).heading, null);
});

test("a feature is kept under its track, else its id, as text", () => {
  assert.equal(trackOf({ id: 3, properties: { track: 42 } }), "42");
  assert.equal(trackOf({ id: 3, properties: {} }), "3");
});
