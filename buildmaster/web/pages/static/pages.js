// buildmaster's pages: live updates only (every page reads fine without this script).
// - a <pre data-stream="..."> follows a build's log through the API's server-sent events;
//   when the build ends, the page's <main> is fetched again (its final state, log and files)
// - a <main data-refresh="N"> is fetched again every N seconds (the overviews)
"use strict";

function replaceMain(html) {
  const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
  const main = document.querySelector("main");
  if (fresh && main) {
    main.replaceWith(fresh);
    start();
  }
}

function reloadMain() {
  return fetch(location.href, {credentials: "same-origin", cache: "no-store"})
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then(replaceMain);
}

function follow(pre) {
  const source = new EventSource(pre.dataset.stream);
  source.addEventListener("logtail", (event) => {
    const data = JSON.parse(event.data);
    if (data.state && data.state !== pre.dataset.state) {
      // dispatched, gathering, cancelling...: the page shows the new state
      source.close();
      reloadMain().catch(() => {});
      return;
    }
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (data.logtail) pre.textContent = data.logtail;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", () => {
    source.close();
    const marker = document.getElementById("live-marker");
    if (marker) { marker.textContent = "ended"; marker.classList.add("ended"); }
    reloadMain().catch(() => {});
  });
  source.addEventListener("error", () => {
    // the server's "error" event, or the connection failing: EventSource reconnects by
    // itself unless it gave up
    if (source.readyState === EventSource.CLOSED) setTimeout(() => follow(pre), 5000);
  });
}

function start() {
  document.querySelectorAll("pre[data-stream]").forEach(follow);
  const main = document.querySelector("main[data-refresh]");
  if (main) {
    const seconds = Number(main.dataset.refresh) || 15;
    setTimeout(() => {
      if (document.hidden) { start(); return; }
      reloadMain().catch(() => setTimeout(start, seconds * 1000));
    }, seconds * 1000);
  }
}

document.addEventListener("DOMContentLoaded", start);
