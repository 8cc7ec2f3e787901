(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "tollway-admin-token";
  /** One summary at a time, the next one this long after the previous answer (a summary reads the whole ledger). */
  const POLL_MS = 10_000;

  // The start script prints dashboard#token=…: keep the token for this tab only and take it out of the
  // address bar (history, bookmarks, screen shares).
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let lastOk = null;

  const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); };
  function fill(id, rows, cols) {
    const tb = $(id).querySelector("tbody");
    tb.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); cols.forEach(([k, cls]) => cell(tr, typeof k === "function" ? k(r) : r[k], cls)); return tr; }));
  }
  function showLogin() {
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    $("main").hidden = true;
    $("login").hidden = false;
  }
  /** The numbers on screen are old: say so, and since when. */
  function markStale(why) {
    document.body.dataset.stale = "true";
    $("stale").hidden = false;
    $("stale").textContent = `Offline: ${why}. ` + (lastOk ? `Showing data from ${lastOk.toLocaleTimeString()}; ` : "") + "retrying…";
  }
  function render(s) {
    $("login").hidden = true; $("main").hidden = false;
    $("total").textContent = s.total + " " + s.symbol;
    $("requests").textContent = s.requests;
    $("open").textContent = s.channels.length;
    lastOk = new Date();
    $("updated").textContent = lastOk.toLocaleTimeString();
    $("chart-time").innerHTML = s.charts.overTime;
    $("chart-payer").innerHTML = s.charts.byPayer;
    $("chart-item").innerHTML = s.charts.byResource;
    fill("items", s.byResource, [["key"], ["revenue", "num"], ["requests", "num"], ["payers", "num"]]);
    fill("channels", s.channels, [[(r) => r.channelId.slice(0, 12) + "…"], [(r) => r.payer.slice(0, 10) + "…"], ["balance", "num"], ["charged", "num"], ["claimed", "num"], ["exposure", "num"], [(r) => (r.secondsToFinalize === null ? "—" : r.secondsToFinalize + " s left")]]);
    fill("history", s.history, [["at"], ["kind"], ["amount", "num"], [(r) => String(r.channels.length), "num"], [(r) => r.txHash.slice(0, 10) + "…" + r.txHash.slice(-6)], ["gasUsed", "num"]]);
    delete document.body.dataset.stale;
    $("stale").hidden = true;
    document.body.dataset.loaded = "true";
  }
  /** true: shown; false: the token was refused; undefined: the node could not answer (marked stale). */
  async function load() {
    let res;
    try {
      res = await fetch("/admin/api/summary", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    } catch {
      markStale("the node cannot be reached");
      return undefined;
    }
    if (res.status === 401 || res.status === 403) { showLogin(); return false; }
    let s;
    try {
      if (!res.ok) throw new Error();
      s = await res.json();
    } catch {
      markStale(`the node answered HTTP ${res.status}`);
      return undefined;
    }
    render(s);
    return true;
  }

  // Polls never overlap: the next one is scheduled when the previous one has answered, and a login or a
  // return to the tab joins a poll in flight instead of starting a second one.
  let inFlight = null;
  let timer = null;
  function refresh() {
    if (!token) return Promise.resolve(false);
    inFlight ??= load().finally(() => {
      inFlight = null;
      schedule();
    });
    return inFlight;
  }
  function schedule() {
    clearTimeout(timer);
    // A hidden tab does not poll; it refreshes when it is shown again.
    if (token && !document.hidden) timer = setTimeout(refresh, POLL_MS);
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) clearTimeout(timer);
    else refresh();
  });
  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    token = $("token").value;
    if (await refresh()) sessionStorage.setItem(TOKEN_KEY, token);
  });
  refresh();
})();
