// The view in the URL hash, so a view can be shared and reloaded (pure: no DOM, no Leaflet):
// #z=11&lat=40.75&lon=-73.95&mode=live&view=now&where=vendor_id:VTS&stale=5&trail=15&color=fence&heat=1&start=&end=

export const DEFAULT_TRAIL_MIN = 15;

/** The view a hash (without its "#") asks for; a number that is absent or not finite is null. */
export function parseHash(text) {
  const h = new URLSearchParams(text);
  const num = (k) => (h.has(k) && h.get(k) !== "" && isFinite(Number(h.get(k))) ? Number(h.get(k)) : null);
  return { z: num("z"), lat: num("lat"), lon: num("lon"), start: num("start"), end: num("end"),
           mode: h.get("mode"), heat: h.get("heat") === "1", color: h.get("color"), view: h.get("view"),
           where: h.getAll("where").filter((w) => w.includes(":")), stale: num("stale"), trail: num("trail") };
}

/** The hash (without its "#") of a view; settings at their defaults are left out. */
export function formatHash({ zoom, lat, lon, replay, view, start, end, heat, colorBy, staleMs, defaultStaleMs,
                             trailMin, where }) {
  const h = new URLSearchParams({ z: zoom, lat: lat.toFixed(5), lon: lon.toFixed(5),
                                  mode: replay ? "replay" : "live", view });
  if (replay && end !== null) { h.set("start", start); h.set("end", end); }
  if (heat) h.set("heat", "1");
  if (colorBy !== "speed") h.set("color", colorBy);
  if (staleMs !== defaultStaleMs) h.set("stale", +(staleMs / 60000).toFixed(4));
  if (trailMin !== DEFAULT_TRAIL_MIN) h.set("trail", trailMin);
  for (const w of where) h.append("where", w);
  return h.toString();
}
