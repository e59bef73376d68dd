// The colour scales: speed classes, fence colours, count classes and their legends.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  COUNT_COLORS, FENCE_COLORS, NO_FENCE, SPEED_CLASSES, countBreaks, countColor, countLegend, fenceColor, fenceLegend,
  speedColor, speedLegend,
} from "../../static/lib/colors.js";

test("a speed gets the class whose upper limit it is below; a limit itself belongs to the next class", () => {
  let low = 0;
  for (const [i, [limit, color]] of SPEED_CLASSES.entries()) {
    assert.equal(speedColor(low), color);
    if (limit !== Infinity) {
      assert.equal(speedColor(limit - 1e-9), color);
      assert.equal(speedColor(limit), SPEED_CLASSES[i + 1][1]);
    }
    low = limit;
  }
  assert.equal(speedColor(1e12), SPEED_CLASSES.at(-1)[1]);
  assert.equal(new Set(SPEED_CLASSES.map(([, c]) => c)).size, SPEED_CLASSES.length);
});

test("no speed is drawn as standing still", () => {
  for (const v of [null, undefined, 0, NaN]) assert.equal(speedColor(v), SPEED_CLASSES[0][1]);
});

test("a fence's colour depends on its id only, and outside every fence it is grey", () => {
  assert.equal(fenceColor([]), NO_FENCE);
  assert.equal(fenceColor(null), NO_FENCE);
  assert.equal(fenceColor("jfk"), NO_FENCE); // not a list
  const ids = Array.from({ length: 40 }, (_, i) => `fence-${i}`);
  for (const id of ids) {
    assert.ok(FENCE_COLORS.includes(fenceColor([id])));
    assert.equal(fenceColor([id, "other"]), fenceColor([id]));
  }
  assert.ok(new Set(ids.map((id) => fenceColor([id]))).size >= 4, "ids spread over the palette");
});

test("count breaks start at 1, grow, stay within the largest count and each colour once", () => {
  for (const counts of [[1], [3, 1], [7], [40, 2], [1000], [123456, 5, 9]]) {
    const max = Math.max(...counts);
    const breaks = countBreaks(counts);
    assert.equal(breaks[0], 1);
    assert.ok(breaks.every((b, i) => i === 0 || b > breaks[i - 1]), String(breaks));
    assert.ok(breaks.at(-1) <= max && breaks.length <= COUNT_COLORS.length);
    const colors = breaks.map((b) => countColor(b, breaks));
    assert.equal(new Set(colors).size, breaks.length);
    assert.equal(countColor(max, breaks), breaks.length > 1 ? COUNT_COLORS.at(-1) : COUNT_COLORS[0]);
    assert.equal(countColor(1, breaks), COUNT_COLORS[0]);
  }
  assert.deepEqual(countBreaks([]), [1]);
});

test("legends list each class with its colour", () => {
  const breaks = countBreaks([500]);
  const count = countLegend(breaks, "tracks");
  assert.match(count, /^<b>tracks per cell<\/b>/);
  assert.equal(count.split("<i ").length - 1, breaks.length);
  assert.ok(count.endsWith(`${breaks.at(-1)}+`));
  const speed = speedLegend();
  for (const [, color] of SPEED_CLASSES) assert.ok(speed.includes(`background:${color}`));
  const fences = fenceLegend(["b<x>", "a", "a"]);
  assert.ok(fences.indexOf(">a<") < fences.indexOf("b&#60;x&#62;") && !fences.includes("<x>"));
  assert.ok(fences.endsWith(`<i style="background:${NO_FENCE}"></i>none`));
});
