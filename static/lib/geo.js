// Longitudes, bounding boxes and distances (pure: no DOM, no Leaflet).

/** A longitude brought into [-180, 180). */
export const wrap = (lon) => ((((lon + 180) % 360) + 360) % 360) - 180;

/** ``lon`` shifted by whole turns so it is drawn next to ``centre`` (views across the antimeridian). */
export const near = (lon, centre) => lon + 360 * Math.round((centre - lon) / 360);

/** The API's bbox [west, south, east, north] of a view's edges: latitudes clipped, longitudes wrapped (west >
 * east across the antimeridian), the whole world when the view spans a turn or more. */
export function viewBBox(west, south, east, north) {
  const s = Math.max(-90, south), n = Math.min(90, north);
  if (east - west >= 360) return [-180, s, 180, n];
  return [wrap(west), s, wrap(east), n].map((v) => +v.toFixed(6));
}

/** Leaflet bounds [[south, west], [north, east]] of an API bbox, the east unwrapped past 180 when it crosses. */
export function bboxBounds([w, s, e, n]) {
  return [[s, w], [n, w > e ? e + 360 : e]];
}

/** Great-circle distance in metres between two [lon, lat] points (haversine, mean Earth radius). */
export function metres([lon1, lat1], [lon2, lat2]) {
  const r = Math.PI / 180, dLat = (lat2 - lat1) * r, dLon = (lon2 - lon1) * r;
  const x = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(x)));
}

/** Speed in m/s of each step between consecutive points (times in ms); 0 where no time passed. */
export function stepSpeeds(coords, times) {
  const out = [];
  for (let i = 1; i < coords.length; i++) {
    const dt = (times[i] - times[i - 1]) / 1000;
    out.push(dt > 0 ? metres(coords[i - 1], coords[i]) / dt : 0);
  }
  return out;
}

/** A heading in degrees brought into [0, 360), or null when there is none. */
export function heading(deg) {
  return typeof deg === "number" && isFinite(deg) ? ((deg % 360) + 360) % 360 : null;
}
