// atr-dist dashboard: live updates from /events, and the operator's buttons.
//
// - Each `stats` event updates the counts in place; when the queue changed (counts, totals or
//   paused), every element with a `data-live` URL is fetched again from the server, which
//   renders (and escapes) it. No job data is ever turned into HTML here.
// - Retry, Cancel, Pause, Resume and "retry all" post to /api/v1 with the admin token as a
//   Bearer header. The token is asked for once and kept in sessionStorage (this tab only).
"use strict";

(function () {
  const TOKEN_KEY = "atr-dist-admin-token";
  const STATES = ["scheduled", "queued", "running", "retrying", "done", "dead", "cancelled"];

  const $ = (selector) => document.querySelector(selector);

  // ---- messages -------------------------------------------------------------------------

  function flash(text, isError) {
    const box = $("#flash");
    if (!box) return;
    box.textContent = text;
    box.classList.toggle("error", Boolean(isError));
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, isError ? 12000 : 5000);
  }

  // ---- live fragments --------------------------------------------------------------------

  let refreshing = false;
  let refreshAgain = false;

  async function refreshLive() {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try {
      const parts = Array.from(document.querySelectorAll("[data-live]"));
      await Promise.all(parts.map(async (el) => {
        const response = await fetch(el.dataset.live, { headers: { Accept: "text/html" } });
        if (!response.ok) return;
        const html = await response.text();
        // Server-rendered and escaped by the server; replacing a fragment we asked for.
        el.innerHTML = html;
      }));
    } catch (e) {
      // The next event retries; the status badge already says when the server is gone.
    } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; refreshLive(); }
    }
  }

  function setLiveStatus(state, text) {
    const el = $("#live-status");
    if (!el) return;
    el.dataset.liveState = state;
    el.textContent = text;
  }

  let lastVersion = null;

  function applyStats(stats) {
    for (const state of STATES) {
      for (const el of document.querySelectorAll(`[data-count="${state}"]`)) {
        el.textContent = String(stats.counts[state]);
      }
    }
    const paused = Boolean(stats.paused);
    const badge = $("#paused-badge");
    if (badge) badge.hidden = !paused;
    for (const b of document.querySelectorAll('[data-action="pause"]')) b.hidden = paused;
    for (const b of document.querySelectorAll('[data-action="resume"]')) b.hidden = !paused;
    const version = JSON.stringify([stats.counts, stats.totals, stats.paused]);
    if (lastVersion !== null && version !== lastVersion) refreshLive();
    lastVersion = version;
  }

  function connect() {
    if (!window.EventSource) return;
    const source = new EventSource("/events");
    source.addEventListener("open", () => setLiveStatus("live", "Live"));
    source.addEventListener("stats", (event) => {
      setLiveStatus("live", "Live");
      applyStats(JSON.parse(event.data));
    });
    source.addEventListener("unavailable", (event) => {
      const body = JSON.parse(event.data);
      setLiveStatus("down", "Redis unavailable");
      flash(body.error, true);
    });
    // EventSource reconnects by itself; say so meanwhile.
    source.addEventListener("error", () => setLiveStatus("down", "Reconnecting…"));
  }

  // ---- the admin token -------------------------------------------------------------------

  function askToken(message) {
    const dialog = $("#token-dialog");
    const input = $("#token-input");
    const error = $("#token-error");
    return new Promise((resolve) => {
      error.textContent = message || "";
      error.hidden = !message;
      input.value = "";
      dialog.addEventListener("close", function done() {
        dialog.removeEventListener("close", done);
        const token = input.value.trim();
        input.value = "";
        if (dialog.returnValue === "save" && token) {
          sessionStorage.setItem(TOKEN_KEY, token);
          resolve(token);
        } else {
          resolve(null);
        }
      });
      dialog.showModal();
      input.focus();
    });
  }

  // POSTs to the API with the token, asking for it when there is none or it was refused.
  async function post(url, body) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    let message = null;
    for (let tries = 0; tries < 3; tries++) {
      if (!token) {
        token = await askToken(message);
        if (!token) return null;
      }
      const init = { method: "POST", headers: { Authorization: `Bearer ${token}` } };
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await fetch(url, init);
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        token = null;
        message = "That token was refused. Enter the admin token.";
        continue;
      }
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        flash(data.error || `${response.status} ${response.statusText}`, true);
        return null;
      }
      return data;
    }
    return null;
  }

  const ACTIONS = {
    async retry(button) {
      const id = button.dataset.jobId;
      const data = await post(`/api/v1/jobs/${encodeURIComponent(id)}/retry`);
      if (data) flash(`Job ${id}: ${data.message}.`);
    },
    async cancel(button) {
      const id = button.dataset.jobId;
      const data = await post(`/api/v1/jobs/${encodeURIComponent(id)}/cancel`);
      if (data) flash(`Job ${id}: ${data.message}.`);
    },
    async "retry-matching"(button) {
      const filter = JSON.parse(button.dataset.filter || "{}");
      const data = await post("/api/v1/jobs/retry", filter);
      if (data) flash(`${data.retried} dead job(s) queued again.`);
    },
    async pause() {
      const data = await post("/api/v1/queue/pause");
      if (data) flash(`Queue ${data.queue} paused: running jobs finish, no new ones start.`);
    },
    async resume() {
      const data = await post("/api/v1/queue/resume");
      if (data) flash(`Queue ${data.queue} resumed.`);
    },
    async token() {
      await askToken(null);
    },
  };

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-action]");
    if (!button || !(button.dataset.action in ACTIONS)) return;
    event.preventDefault();
    button.disabled = true;
    try {
      await ACTIONS[button.dataset.action](button);
      await refreshLive();
    } catch (e) {
      flash(`The request failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const cancel = $("#token-cancel");
    if (cancel) cancel.addEventListener("click", () => $("#token-dialog").close("cancel"));
    const forget = $("#token-forget");
    if (forget) {
      forget.addEventListener("click", () => {
        sessionStorage.removeItem(TOKEN_KEY);
        $("#token-dialog").close("cancel");
        flash("The admin token is forgotten in this tab.");
      });
    }
    connect();
  });
})();
