// Replay: a time window over the data's extent, moved by the slider or played forward (``speed`` data seconds
// per second). It sets the window in the store; ``changed()`` redraws, ``entered()`` is called as replay starts.
import * as api from "./api.js";
import { fmtTime } from "./lib/format.js";
import { state } from "./store.js";

const $ = (id) => document.getElementById(id);
const CONTROLS = ["slider", "play", "speed", "windowSize"];

export function createReplay(changed, entered) {
  let timer = null;

  function showWindow() {
    $("windowLabel").textContent = `${fmtTime(state.start)} – ${fmtTime(state.end)}`;
  }
  function windowFromSlider() {
    const ext = state.extent;
    if (!ext || ext.start === null) return;
    const frac = Number($("slider").value) / 1000;
    state.end = Math.round(ext.start + frac * (ext.end - ext.start));
    state.start = Math.max(ext.start, state.end - state.windowMs);
    showWindow();
  }
  function sliderFromWindow() {
    const ext = state.extent;
    if (!ext || ext.start === null || state.end === null || ext.end === ext.start) return;
    $("slider").value = String(Math.round(1000 * (state.end - ext.start) / (ext.end - ext.start)));
    showWindow();
  }
  function stop() {
    state.playing = false; $("play").textContent = "Play";
    if (timer) clearInterval(timer);
    timer = null;
  }
  function play() {
    state.playing = true; $("play").textContent = "Pause";
    timer = setInterval(() => {
      const ext = state.extent;
      if (!ext || ext.end === null) return stop();
      state.end = Math.min(ext.end, (state.end ?? ext.start) + state.speed * 1000);
      state.start = Math.max(ext.start, state.end - state.windowMs);
      sliderFromWindow(); changed();
      if (state.end >= ext.end) stop();
    }, 1000);
  }
  /** Replay on (the window from the store, else the extent's start) or off (live). */
  async function set(on) {
    state.replay = on;
    $("replay").checked = on;
    $("viewMode").disabled = on;
    for (const id of CONTROLS) $(id).disabled = !on;
    if (on) {
      entered();
      state.extent = await api.extent();
      if (state.end === null) { $("slider").value = "0"; windowFromSlider(); } else sliderFromWindow();
    } else {
      stop(); state.start = state.end = null; $("windowLabel").textContent = "";
    }
    changed();
  }

  $("replay").addEventListener("change", (e) => set(e.target.checked));
  $("slider").addEventListener("input", () => { windowFromSlider(); changed(); });
  $("play").addEventListener("click", () => (state.playing ? stop() : play()));
  $("speed").addEventListener("change", (e) => { state.speed = Number(e.target.value); });
  $("windowSize").addEventListener("change", (e) => {
    state.windowMs = Number(e.target.value);
    if (state.replay) { windowFromSlider(); changed(); }
  });
  return { set };
}
