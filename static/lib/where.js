// The filter expressions of the panel and the URL (`field:expr`, the API's `where` language; pure: no DOM,
// no Leaflet). A row of the panel shows one field's expression as a value list, a range, or as typed.
import { fmtTime } from "./format.js";

export const RANGE_KINDS = ["int", "float", "time"];
export const VALUE_KINDS = ["string", "int", "bool"];
const LOCAL_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$/;

/** "field:expr" split at its first colon. */
export function splitWhere(w) {
  const i = w.indexOf(":");
  return [w.slice(0, i), w.slice(i + 1)];
}

/** The query-string part of a list of where expressions ("&where=..." each). */
export const whereQuery = (where) => where.map((w) => "&where=" + encodeURIComponent(w)).join("");

/** An expression read as {min, max} (a range on a range kind), {values} (a|b) or {raw} (a strict bound). */
export function parseExpr(kind, expr) {
  const m = /^(>=|<=)(.+)$/.exec(expr);
  if (RANGE_KINDS.includes(kind)) {
    if (m) return m[1] === ">=" ? { min: m[2], max: "" } : { min: "", max: m[2] };
    if (/^[<>]/.test(expr)) return { raw: expr };
    if (expr.includes("..")) { const [min, max] = expr.split(".."); return { min, max }; }
  }
  return { values: expr };
}

/** A time bound as the text a datetime-local input shows (UTC, seconds); other forms stay as typed. Epoch
 * seconds and milliseconds are told apart by magnitude, as the server does. */
export function timeInput(text) {
  if (/^-?\d{1,13}$/.test(text)) {
    const ms = Math.abs(+text) < 1e11 ? +text * 1000 : +text;
    return ms % 1000 === 0 ? fmtTime(ms).slice(0, 19) : text;
  }
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?)Z?$/.exec(text);
  return m ? m[1] : text;
}

/** What a panel row for a field of ``kind`` shows of ``expr``: what its inputs cannot show (equality on a
 * float or time, a time with an offset) stays as typed ({raw}). */
export function rowInputs(kind, expr) {
  let parsed = expr ? parseExpr(kind, expr) : {};
  if (parsed.values !== undefined && !VALUE_KINDS.includes(kind)) parsed = { raw: expr };
  const local = (t) => !t || LOCAL_TIME.test(timeInput(t));
  if (kind === "time" && !(local(parsed.min) && local(parsed.max))) parsed = { raw: expr };
  return parsed;
}

/** The where expressions of one panel row's input texts (several when it has values and a range: AND). */
export function rowWhere(field, { raw = "", values = "", min = "", max = "" }) {
  const out = [];
  if (raw) out.push(`${field}:${raw}`);
  if (values) out.push(`${field}:${values}`);
  if (min && max) out.push(`${field}:${min}..${max}`);
  else if (min) out.push(`${field}:>=${min}`);
  else if (max) out.push(`${field}:<=${max}`);
  return out;
}
