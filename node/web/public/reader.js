/* global Tollway */
(async () => {
  const $ = (id) => document.getElementById(id);
  const catalog = await (await fetch("/demo/catalog")).json();
  const demo = await (await fetch("/demo/wallet")).json();
  const local = Tollway.privateKeyToAccount(demo.privateKey);
  $("addr").textContent = local.address.slice(0, 8) + "…" + local.address.slice(-4);
  window.__tollwayPrompts = 0;

  // A demo EIP-1193 wallet: every signature needs the reader's click in a dialog, like an extension.
  const provider = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [local.address];
      if (method === "eth_chainId") return "0x" + catalog.chainId.toString(16);
      if (method === "eth_signTypedData_v4") {
        const td = JSON.parse(params[1]);
        window.__tollwayPrompts++;
        const value = td.message.value ? (Number(td.message.value) / 1e6).toFixed(2) + " USDC" : "";
        $("sign-text").textContent = td.primaryType === "ReceiveWithAuthorization"
          ? `Deposit ${value} into a payment channel with ${catalog.publisher}? This covers many unlocks.`
          : `Sign ${td.primaryType}?`;
        const dialog = $("sign");
        dialog.showModal();
        const answer = await new Promise((r) => dialog.addEventListener("close", () => r(dialog.returnValue), { once: true }));
        if (answer !== "approve") throw Object.assign(new Error("User rejected the request"), { code: 4001 });
        const { EIP712Domain, ...types } = td.types;
        return local.signTypedData({ domain: td.domain, types, primaryType: td.primaryType, message: td.message });
      }
      throw new Error("unsupported " + method);
    },
  };
  const t = await Tollway.connect({ provider, chainId: catalog.chainId, policy: { maxPerRequest: 100000n, maxDeposit: 2000000n, depositMultiplier: 20 } });

  async function refreshBalance() {
    const chs = await t.channels(6);
    const ch = chs.find((c) => Number(c.remaining) > 0) || chs[0];
    $("balance").textContent = ch ? ch.remaining + " USDC left" : "no channel yet";
    $("close").disabled = !ch || Number(ch.remaining) <= 0;
  }
  async function pay(url) {
    $("status").textContent = "Paying…";
    const res = await t.fetch(url);
    if (!res.ok) throw new Error("HTTP " + res.status);
    $("status").textContent = "";
    await refreshBalance();
    return res;
  }
  const cents = (p) => Math.round(Number(p) * 100) + "c";

  for (const a of catalog.articles) {
    const el = document.createElement("article");
    el.innerHTML = `<div class="kind"></div><h3></h3><p></p><button type="button"></button><div class="body" hidden></div>`;
    el.querySelector(".kind").textContent = a.kind === "long" ? "Investigation" : "Brief";
    el.querySelector("h3").textContent = a.title;
    el.querySelector("p").textContent = a.teaser;
    const btn = el.querySelector("button");
    btn.textContent = `Unlock for ${cents(a.price)}`;
    btn.dataset.article = a.id;
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        const body = await (await pay(a.url)).text();
        const div = el.querySelector(".body");
        div.textContent = body;
        div.hidden = false;
        btn.textContent = "Unlocked";
      } catch (e) {
        btn.disabled = false;
        $("status").textContent = "Not unlocked: " + e.message;
      }
    });
    $("articles").appendChild(el);
  }
  for (const s of catalog.songs) {
    const el = document.createElement("div");
    el.className = "card";
    el.innerHTML = `<h3></h3><button type="button"></button><audio controls hidden></audio>`;
    el.querySelector("h3").textContent = s.title;
    const btn = el.querySelector("button");
    btn.textContent = `Play for ${cents(s.price)}`;
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        const blob = await (await pay(s.url)).blob();
        const audio = el.querySelector("audio");
        audio.src = URL.createObjectURL(blob);
        audio.hidden = false;
        btn.textContent = "Paid";
      } catch (e) {
        btn.disabled = false;
        $("status").textContent = "Not played: " + e.message;
      }
    });
    $("songs").appendChild(el);
  }
  $("watch").addEventListener("click", async () => {
    $("watch").disabled = true;
    let spent = 0;
    for (let n = 0; n < 10; n++) {
      await pay(`${catalog.stream.url}/${n}`);
      spent += Number(catalog.stream.price);
      $("stream-progress").value = n + 1;
      $("stream-cost").textContent = `Watched ${n + 1} chunks for ${spent.toFixed(3)} USDC`;
    }
    $("watch").disabled = false;
  });
  $("close").addEventListener("click", async () => {
    $("close").disabled = true;
    try {
      const refunded = await t.refund(catalog.articles[0].url);
      $("status").textContent = `Channel closed: ${(Number(refunded) / 1e6).toFixed(2)} USDC returned to your wallet.`;
    } catch (e) {
      $("status").textContent = "Refund failed: " + e.message;
    }
    await refreshBalance();
  });
  await refreshBalance();
  document.body.dataset.ready = "true";
})();
