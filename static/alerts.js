// The panel's geofence alerts: from the poll of /api/alerts (the history, and while the event stream is not
// open) and from the stream, newest first, each shown once.
import * as api from "./api.js";
import { mergeAlerts } from "./lib/alerts.js";
import { esc, fmtTime } from "./lib/format.js";

const MAX_ALERTS = 50;

export function createAlerts(list) {
  let shown = [], connected = null, polls = 0;

  function render() {
    list.innerHTML = shown.map((a) =>
      `<li class="${esc(a.event)}" data-via="${esc(a.via)}">${esc(a.event)} ${esc(a.fence)}` +
      (a.removed ? " (fence removed)" : "") + `: ${esc(a.track)}` +
      (typeof a.time === "number" ? ` <span>${fmtTime(a.time)}</span>` : "") + "</li>").join("") ||
      `<li>${connected === false ? "alerts stream not connected" : "none yet"}</li>`;
  }
  function add(alerts, via) {
    const merged = mergeAlerts(shown, alerts, via, MAX_ALERTS);
    if (merged) { shown = merged; render(); }
  }
  return {
    render,
    add,
    /** Fetch the recent alerts; a failure is left to the map's own error line (alerts are secondary). */
    async poll() {
      try {
        const body = await api.alerts();
        polls += 1;
        connected = body.connected;
        add(body.alerts, "poll");
        render();
      } catch (err) { /* the map itself shows data errors */ }
    },
    stats: () => ({ shown: shown.length, polls, connected }),
  };
}
