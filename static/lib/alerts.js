// The list of geofence alerts the panel shows (pure: no DOM, no Leaflet).

const alertKey = (a) => [a.track, a.fence, a.event, a.time].join("\u0001");
const timeOf = (a) => (typeof a.time === "number" ? a.time : 0);

/** ``shown`` with the alerts of ``list`` it lacks (each marked with ``via``), newest first, at most ``max``;
 * null when nothing is new (an alert from the poll and from the stream alike is shown once). */
export function mergeAlerts(shown, list, via, max) {
  const seen = new Set(shown.map(alertKey));
  const fresh = list.filter((a) => a && typeof a === "object" && !seen.has(alertKey(a)))
    .map((a) => Object.assign({}, a, { via }));
  if (!fresh.length) return null;
  return fresh.concat(shown).sort((x, y) => timeOf(y) - timeOf(x)).slice(0, max);
}
