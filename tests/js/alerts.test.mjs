// The alerts list: newest first, each alert once, at most a given number.
import assert from "node:assert/strict";
import { test } from "node:test";

import { mergeAlerts } from "../../static/lib/alerts.js";

const alert = (track, time, event = "enter") => ({ track, fence: "jfk", event, time });

test("new alerts join the list newest first, marked with where they came from", () => {
  const shown = mergeAlerts([], [alert("a", 1), alert("b", 3)], "poll", 50);
  assert.deepEqual(shown.map((a) => [a.track, a.via]), [["b", "poll"], ["a", "poll"]]);
  const more = mergeAlerts(shown, [alert("c", 2), alert("a", 1)], "sse", 50);
  assert.deepEqual(more.map((a) => [a.track, a.via]), [["b", "poll"], ["c", "sse"], ["a", "poll"]]);
});

test("nothing new gives null; non-objects are ignored; the list is capped", () => {
  const shown = mergeAlerts([], [alert("a", 1)], "poll", 50);
  assert.equal(mergeAlerts(shown, [alert("a", 1), null, "x"], "sse", 50), null);
  const many = mergeAlerts([], Array.from({ length: 60 }, (_, i) => alert(`t${i}`, i)), "poll", 50);
  assert.equal(many.length, 50);
  assert.equal(many[0].time, 59);
  assert.equal(mergeAlerts([], [alert("a", 1, "enter"), alert("a", 1, "exit")], "poll", 50).length, 2);
});

test("alerts without a time go last", () => {
  const shown = mergeAlerts([], [{ track: "x", fence: "f", event: "exit" }, alert("a", 5)], "poll", 50);
  assert.deepEqual(shown.map((a) => a.track), ["a", "x"]);
});
