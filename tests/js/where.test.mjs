// Filter expressions: how a panel row shows one, and what a row's inputs give back.
import assert from "node:assert/strict";
import { test } from "node:test";

import { parseExpr, rowInputs, rowWhere, splitWhere, timeInput, whereQuery } from "../../static/lib/where.js";

test("range kinds read bounds and ranges; strict bounds stay raw; other kinds read value lists", () => {
  assert.deepEqual(parseExpr("int", ">=3"), { min: "3", max: "" });
  assert.deepEqual(parseExpr("float", "<=2.5"), { min: "", max: "2.5" });
  assert.deepEqual(parseExpr("float", "5..20"), { min: "5", max: "20" });
  assert.deepEqual(parseExpr("time", ">2013-01-01"), { raw: ">2013-01-01" });
  assert.deepEqual(parseExpr("int", "1|2"), { values: "1|2" });
  assert.deepEqual(parseExpr("string", ">=a"), { values: ">=a" });
});

test("a row shows as typed what its inputs cannot: equality on a float or time, a time with an offset", () => {
  assert.deepEqual(rowInputs("float", "2.5"), { raw: "2.5" });
  assert.deepEqual(rowInputs("time", "1357000000000"), { raw: "1357000000000" });
  assert.deepEqual(rowInputs("time", ">=2013-01-01T00:00:00+01:00"), { raw: ">=2013-01-01T00:00:00+01:00" });
  assert.deepEqual(rowInputs("time", ">=2013-01-01T00:00:00Z"), { min: "2013-01-01T00:00:00Z", max: "" });
  assert.deepEqual(rowInputs("bool", "false"), { values: "false" });
  assert.deepEqual(rowInputs("int", ""), {});
});

test("a row's inputs give its expression back", () => {
  for (const [kind, expr] of [["int", ">=3"], ["int", "<=7"], ["int", "3..7"], ["int", "1|2"], ["float", ">5"],
                              ["string", "VTS|CMT"], ["bool", "true"], ["float", "2.5"]]) {
    assert.deepEqual(rowWhere("f", rowInputs(kind, expr)), [`f:${expr}`], `${kind} ${expr}`);
  }
  assert.deepEqual(rowWhere("f", { values: "1|2", min: "3" }), ["f:1|2", "f:>=3"]); // both: AND
  assert.deepEqual(rowWhere("f", {}), []);
});

test("a time bound shows as a datetime-local text in UTC; epoch seconds and milliseconds by magnitude", () => {
  assert.equal(timeInput("1357000000"), "2013-01-01T00:26:40");
  assert.equal(timeInput("1357000000000"), "2013-01-01T00:26:40");
  assert.equal(timeInput("1357000000123"), "1357000000123"); // milliseconds the input cannot show
  assert.equal(timeInput("2013-01-01T00:26:40Z"), "2013-01-01T00:26:40");
  assert.equal(timeInput("2013-01-01T00:26"), "2013-01-01T00:26");
  assert.equal(timeInput("2013-01-01T00:26:40+01:00"), "2013-01-01T00:26:40+01:00");
});

test("where: split at the first colon; into the query string encoded", () => {
  assert.deepEqual(splitWhere("time:>=12:30"), ["time", ">=12:30"]);
  assert.equal(whereQuery(["a:>=3", "b:x|y&z"]), "&where=a%3A%3E%3D3&where=b%3Ax%7Cy%26z");
  assert.equal(whereQuery([]), "");
});
