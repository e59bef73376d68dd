// The event stream (/api/events, Server-Sent Events): latest positions of the view, alerts and fence changes,
// pushed. It follows the URL ``target()`` names (null: no stream) only when ``follow()`` is called; a refused
// stream is asked for again after a growing wait, a dropped one reconnects by itself (with Last-Event-ID).
const RETRY_MS = [2000, 5000, 15000, 30000, 60000];

/** ``handlers``: target() -> URL or null; onLatest(fc) for a `latest` event of a view had whole (fc.full: the
 * whole view, else what changed); onAlert(alert); onGap(); onFences(); onOpen(); onStatus(state). */
export function createEventStream(handlers) {
  let es = null, retryTimer = null, lastEventId = null;
  const s = { state: "off", url: null, first: false, pushes: 0, alerts: 0, failures: 0 };

  function setState(value) {
    s.state = value;
    handlers.onStatus(value);
  }
  function close() {
    if (es) es.close();
    es = null; s.first = false;
  }
  function follow() {
    const url = window.EventSource ? handlers.target() : null;
    if (url === null) {
      close(); s.url = null; setState("off"); return;
    }
    if (es && s.url === url && es.readyState !== EventSource.CLOSED) return;
    if (retryTimer && s.url === url) return; // a retry is scheduled for this very view
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    close();
    s.url = url; setState("connecting");
    // a new view's stream resumes the alerts after the last event of the previous one
    const resume = lastEventId ? "&last_event_id=" + encodeURIComponent(lastEventId) : "";
    const source = new EventSource(url + resume);
    es = source;
    const mine = (fn) => (e) => { if (es === source) fn(e); };
    source.onopen = mine(() => {
      s.failures = 0; setState("open");
      handlers.onOpen();
    });
    source.addEventListener("latest", mine((e) => {
      if (e.lastEventId) lastEventId = e.lastEventId;
      let fc;
      try { fc = JSON.parse(e.data); } catch (err) { return; }
      s.pushes += 1;
      if (fc.full) s.first = true;
      if (!s.first) return; // a change to a view this page has not had whole yet
      handlers.onLatest(fc);
    }));
    source.addEventListener("fences", mine(() => handlers.onFences()));
    source.addEventListener("gap", mine(() => handlers.onGap()));
    source.addEventListener("alert", mine((e) => {
      if (e.lastEventId) lastEventId = e.lastEventId;
      let alert;
      try { alert = JSON.parse(e.data); } catch (err) { return; } // not JSON: nothing to show
      s.alerts += 1;
      handlers.onAlert(alert);
    }));
    source.onerror = mine(() => {
      s.first = false;
      if (source.readyState === EventSource.CLOSED) {
        // refused (404, 400, not an event stream): poll, and ask again later
        es = null;
        const wait = RETRY_MS[Math.min(s.failures, RETRY_MS.length - 1)];
        s.failures += 1;
        retryTimer = setTimeout(() => { retryTimer = null; follow(); }, wait);
        setState("failed");
      } else {
        setState("reconnecting");
      }
    });
  }

  return {
    follow,
    /** Open, and has pushed the whole view of ``url``: the now view needs no poll. */
    live: (url) => s.state === "open" && s.first && s.url === url,
    isOpen: () => s.state === "open",
    /** state, url, first, pushes, alerts, failures. */
    stats: () => ({ ...s }),
  };
}
