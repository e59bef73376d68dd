// The client of the read-only /api the map draws (and of the geofence writes): fetching only, no state.
import { whereQuery } from "./lib/where.js";

/** GET ``url`` as JSON; an answer that is not 2xx throws an Error with the server's message and ``status``. */
export async function getJSON(url, signal) {
  const resp = await fetch(url, { signal });
  const body = await resp.json();
  if (!resp.ok) {
    const err = new Error(body.error || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return body;
}

const timeQuery = (window) => (window ? `&start=${window.start}&end=${window.end}` : "");

export const config = () => getJSON("/api/config");
export const extent = () => getJSON("/api/extent");
export const alerts = () => getJSON("/api/alerts?limit=50");
export const geofences = () => getJSON("/api/geofences");

/** Per-cell counts of current tracks (source=latest). */
export const latestCells = ({ bbox, zoom, where }, signal) =>
  getJSON(`/api/aggregate?source=latest&bbox=${bbox}&zoom=${zoom}${whereQuery(where)}`, signal);

/** The newest tracks' latest positions, at most ``limit``. */
export const latest = ({ bbox, limit, where }, signal) =>
  getJSON(`/api/latest?bbox=${bbox}&limit=${limit}${whereQuery(where)}`, signal);

/** Per-cell counts of observations, in the time window when there is one. */
export const cells = ({ bbox, zoom, window, where }, signal) =>
  getJSON(`/api/aggregate?bbox=${bbox}&zoom=${zoom}${timeQuery(window)}${whereQuery(where)}`, signal);

/** Observations, at most ``limit``, in the time window when there is one. */
export const observations = ({ bbox, limit, window, where }, signal) =>
  getJSON(`/api/observations?bbox=${bbox}&limit=${limit}${timeQuery(window)}${whereQuery(where)}`, signal);

/** One track's reports from ``start`` to ``end`` as a LineString (a Point when only one). */
export const track = ({ track, start, end, where }, signal) =>
  getJSON(`/api/tracks/${encodeURIComponent(track)}?start=${start}&end=${end}${whereQuery(where)}`, signal);

/** The URL of the event stream (latest positions of the view, alerts, fence changes). */
export const eventsURL = ({ bbox, limit, where }) => `/api/events?bbox=${bbox}&limit=${limit}${whereQuery(where)}`;

/** PUT (a Feature) or DELETE a geofence with a bearer token; a refusal throws "status: message". */
export async function sendFence(method, id, token, body) {
  const resp = await fetch(`/api/geofences/${encodeURIComponent(id)}`, {
    method,
    headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(`${resp.status}: ${answer.error || resp.statusText}`);
  return answer;
}
