// Colour scales of the map and their legends (pure: no DOM, no Leaflet).
import { esc } from "./format.js";

export const COUNT_COLORS = ["#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026"];
// m/s: walking, cycling, town and highway traffic, then trains and aircraft (a flight preset too gets colours)
export const SPEED_CLASSES = [[2, "#313695"], [5, "#4575b4"], [10, "#74add1"], [20, "#fee090"], [40, "#fdae61"],
                              [100, "#f46d43"], [200, "#d73027"], [Infinity, "#7f0000"]];
export const FENCE_COLORS = ["#7b3294", "#e66101", "#008837", "#0571b0", "#ca0020", "#5e3c99", "#a6611a"];
export const NO_FENCE = "#8c8c8c";
// Observation markers of the density view: inside some fence or not.
export const IN_FENCE = "#7b3294";
export const OUT_OF_FENCE = "#4d9221";

/** Geometric class breaks up to the largest count, each once: small counts give fewer classes, spread over
 * the whole palette. */
export function countBreaks(counts) {
  const max = Math.max(1, ...counts);
  return [...new Set(COUNT_COLORS.map((_, i) => Math.max(1, Math.round(Math.pow(max, i / COUNT_COLORS.length)))))];
}

/** The colour of class ``i`` of ``n`` classes. */
export const classColor = (i, n) => COUNT_COLORS[n <= 1 ? 0 : Math.round(i * (COUNT_COLORS.length - 1) / (n - 1))];

/** The colour of the highest class whose break ``count`` reaches. */
export function countColor(count, breaks) {
  let k = 0;
  breaks.forEach((b, i) => { if (count >= b) k = i; });
  return classColor(k, breaks.length);
}

/** The colour of a speed in m/s (none counts as 0). */
export function speedColor(v) {
  for (const [limit, color] of SPEED_CLASSES) if ((v || 0) < limit) return color;
  return SPEED_CLASSES[SPEED_CLASSES.length - 1][1];
}

/** One colour per fence id, stable across refreshes and pages (a hash of the first id); grey outside every fence. */
export function fenceColor(fences) {
  if (!Array.isArray(fences) || !fences.length) return NO_FENCE;
  let h = 0;
  for (const ch of String(fences[0])) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return FENCE_COLORS[h % FENCE_COLORS.length];
}

/** The legend of count classes, as HTML. */
export function countLegend(breaks, what) {
  return `<b>${esc(what)} per cell</b><br>` + breaks.map((b, i) =>
    `<i style="background:${classColor(i, breaks.length)}"></i>${b}` +
    (i + 1 < breaks.length ? (breaks[i + 1] - 1 > b ? "–" + (breaks[i + 1] - 1) : "") : "+")
  ).join("<br>");
}

/** The legend of speed classes, as HTML. */
export function speedLegend() {
  let low = 0;
  return "<b>speed (m/s)</b><br>" + SPEED_CLASSES.map(([limit, color]) => {
    const text = limit === Infinity ? `${low}+` : `${low}–${limit}`;
    low = limit;
    return `<i style="background:${color}"></i>${text}`;
  }).join("<br>");
}

/** The legend of fence colours for these fence ids (sorted, at most 12), then "none", as HTML. */
export function fenceLegend(ids) {
  return "<b>geofence</b><br>" + [...new Set(ids)].sort().slice(0, 12).map((id) =>
    `<i style="background:${fenceColor([id])}"></i>${esc(id)}`).concat(
    [`<i style="background:${NO_FENCE}"></i>none`]).join("<br>");
}
