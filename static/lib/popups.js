// Popup contents, as HTML (pure: no DOM, no Leaflet).
import { esc, fmtTime } from "./format.js";

/** An observation's properties as a table (density view markers). */
export function propertiesTable(props) {
  const rows = Object.entries(props).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(Array.isArray(v) ? v.join(", ") : v)}</td></tr>`);
  return `<table class="popup-table">${rows.join("")}</table>`;
}

/** A track's popup: the preset's fields (/api/config `fields`, in its order, then any other attribute) read
 * from its latest-position feature, whatever the preset. */
export function trackTable(f, { schema, fields }, { stale, trailMin }) {
  const p = f.properties, a = p.attributes || {};
  const [lon, lat] = f.geometry.coordinates;
  const value = (name) => {
    if (name === schema.track) return p.track;
    if (name === schema.time) return p.time;
    if (name === schema.lon) return lon;
    if (name === schema.lat) return lat;
    return name in p && name !== "attributes" ? p[name] : a[name];
  };
  const show = (name, v) => {
    if (v === null || v === undefined || (Array.isArray(v) && !v.length)) return "–";
    if (fields[name] === "time" && typeof v === "number") return fmtTime(v);
    if (Array.isArray(v)) return v.join(", ");
    return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v;
  };
  const names = Object.keys(fields).filter((n) => n !== "geohash");
  for (const n of Object.keys(a)) if (!names.includes(n)) names.push(n);
  const rows = names.map((n) =>
    `<tr data-field="${esc(n)}"><td>${esc(n)}</td><td>${esc(show(n, value(n)))}</td></tr>`);
  const tag = stale ? ' <span class="stale-tag">stale</span>' : "";
  return `<b>${esc(p.track)}</b>${tag}<table class="popup-table">${rows.join("")}</table>` +
         `<p class="small trail-note">trail: last ${trailMin} min</p>`;
}
