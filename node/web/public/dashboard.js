(() => {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("tollway-admin-token") || new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); };
  function fill(id, rows, cols) {
    const tb = $(id).querySelector("tbody");
    tb.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); cols.forEach(([k, cls]) => cell(tr, typeof k === "function" ? k(r) : r[k], cls)); return tr; }));
  }
  async function load() {
    const res = await fetch("/admin/api/summary", { headers: { Authorization: "Bearer " + token } });
    if (res.status === 401 || res.status === 403) { $("main").hidden = true; $("login").hidden = false; return false; }
    const s = await res.json();
    $("login").hidden = true; $("main").hidden = false;
    $("total").textContent = s.total + " " + s.symbol;
    $("requests").textContent = s.requests;
    $("open").textContent = s.channels.length;
    $("updated").textContent = new Date().toLocaleTimeString();
    $("chart-time").innerHTML = s.charts.overTime;
    $("chart-payer").innerHTML = s.charts.byPayer;
    $("chart-item").innerHTML = s.charts.byResource;
    fill("items", s.byResource, [["key"], ["revenue", "num"], ["requests", "num"], ["payers", "num"]]);
    fill("channels", s.channels, [[(r) => r.channelId.slice(0, 12) + "…"], [(r) => r.payer.slice(0, 10) + "…"], ["balance", "num"], ["charged", "num"], ["claimed", "num"], ["exposure", "num"], [(r) => (r.secondsToFinalize === null ? "—" : r.secondsToFinalize + " s left")]]);
    fill("history", s.history, [["at"], ["kind"], ["amount", "num"], [(r) => String(r.channels.length), "num"], [(r) => r.txHash.slice(0, 10) + "…" + r.txHash.slice(-6)], ["gasUsed", "num"]]);
    document.body.dataset.loaded = "true";
    return true;
  }
  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    token = $("token").value;
    if (await load()) sessionStorage.setItem("tollway-admin-token", token);
  });
  if (token) load();
  setInterval(() => token && load(), 2000);
})();
