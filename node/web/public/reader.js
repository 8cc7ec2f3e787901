/* global Tollway */
(async () => {
  const $ = (id) => document.getElementById(id);
  const status = (text, isError = false) => {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  };

  /** A failure as the reader should read it (the wallet's rejection, a policy refusal, an HTTP error). */
  function describe(e) {
    if (e && e.code === 4001) return "you rejected the wallet request.";
    if (e && e.name === "PolicyError") return "your payment limits refused it (" + (e.shortMessage || e.message) + ").";
    if (e && e.name === "ServerMisbehaviorError") return "the publisher's server broke the payment rules; this channel is stopped.";
    if (e instanceof TypeError) return "the publisher's server could not be reached.";
    const text = (e && (e.shortMessage || e.message)) || String(e);
    return /[.!?)]$/.test(text) ? text : text + ".";
  }

  let catalog;
  let t;
  let local;
  try {
    const get = async (url) => {
      const res = await fetch(url);
      if (!res.ok) throw new Error(url + " answered HTTP " + res.status);
      return res.json();
    };
    catalog = await get("/demo/catalog");
    const demo = await get("/demo/wallet");
    local = Tollway.privateKeyToAccount(demo.privateKey);
  } catch (e) {
    status("The page could not start: " + describe(e) + " Reload to try again.", true);
    document.body.dataset.error = "startup";
    return;
  }
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
          ? `Deposit ${value} into a payment channel with ${catalog.publisher} (${catalog.payTo.slice(0, 8)}…)? This covers many unlocks; what is left comes back when you close the channel, or by withdrawing, ${Math.round(catalog.withdrawDelay / 60)} minutes after you ask.`
          : td.primaryType === "SessionKey"
            ? "Sign the backup of this browser's payment key? Only a backup your wallet signed can be restored."
            : `Sign ${td.primaryType}?`;
        const dialog = $("sign");
        dialog.showModal();
        const answer = await new Promise((r) => dialog.addEventListener("close", () => r(dialog.returnValue), { once: true }));
        if (answer !== "approve") throw Object.assign(new Error("User rejected the request"), { code: 4001 });
        const { EIP712Domain, ...types } = td.types;
        return local.signTypedData({ domain: td.domain, types, primaryType: td.primaryType, message: td.message });
      }
      throw new Error("the demo wallet does not support " + method);
    },
  };
  let paying = 0; // payments and refunds running (a restore waits for them)
  let restoring; // a restore running: payments and refunds wait for it
  // Paying only the publisher, in its token, on channels whose money a withdrawal frees within the
  // publisher's stated delay: a 402 naming another receiver or a longer lock-up is refused, nothing signed.
  const connectOptions = {
    provider,
    chainId: catalog.chainId,
    policy: { maxPerRequest: 100000n, maxDeposit: 2000000n, depositMultiplier: 20, allowedAssets: [catalog.token], allowedPayTo: [catalog.payTo], maxWithdrawDelay: catalog.withdrawDelay },
  };
  try {
    t = await Tollway.connect(connectOptions);
  } catch (e) {
    status("The page could not start: " + describe(e), true);
    document.body.dataset.error = "startup";
    return;
  }

  async function refreshBalance() {
    const chs = await t.channels(6);
    const ch = chs.find((c) => Number(c.remaining) > 0) || chs[0];
    $("balance").textContent = ch ? ch.remaining + " USDC left" : "no channel yet";
    $("close").disabled = !ch || Number(ch.remaining) <= 0;
    $("backup").disabled = chs.length === 0;
  }
  // `price`: what the button showed (decimal USDC). The payment is capped at it: a 402 asking more is
  // refused, nothing signed (the page's policy cap alone would let a server charge up to 10c).
  async function pay(url, price) {
    status("Paying…");
    try {
      const maxAmount = BigInt(Math.round(Number(price) * 1e6));
      if (restoring) await restoring; // pay with the key the restore brings back
      paying++;
      const res = await t.fetch(url, undefined, { maxAmount }).finally(() => paying--);
      if (!res.ok) throw new Error(res.status === 402 ? "the payment was not accepted (HTTP 402)." : "the server answered HTTP " + res.status + ".");
      status("");
      return res;
    } finally {
      await refreshBalance().catch(() => undefined);
    }
  }
  const cents = (p) => Math.round(Number(p) * 100) + "c";

  // Articles already paid for in this browser open from here on a reload, without paying again.
  const unlockedKey = (url) => "tollway-unlocked:" + local.address.toLowerCase() + ":" + url;
  const showArticle = (el, btn, body) => {
    const div = el.querySelector(".body");
    div.textContent = body;
    div.hidden = false;
    btn.textContent = "Unlocked";
    btn.disabled = true;
  };
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
        const body = await (await pay(a.url, a.price)).text();
        try {
          localStorage.setItem(unlockedKey(a.url), body);
        } catch {
          // storage full or disabled: the article stays readable until the page closes
        }
        showArticle(el, btn, body);
      } catch (e) {
        btn.disabled = false;
        status("Not unlocked: " + describe(e), true);
      }
    });
    let saved = null;
    try {
      saved = localStorage.getItem(unlockedKey(a.url));
    } catch {
      // storage disabled: nothing remembered
    }
    if (saved !== null) showArticle(el, btn, saved);
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
        const blob = await (await pay(s.url, s.price)).blob();
        const audio = el.querySelector("audio");
        audio.src = URL.createObjectURL(blob);
        audio.hidden = false;
        btn.textContent = "Paid";
      } catch (e) {
        btn.disabled = false;
        status("Not played: " + describe(e), true);
      }
    });
    $("songs").appendChild(el);
  }
  $("watch").addEventListener("click", async () => {
    $("watch").disabled = true;
    let spent = 0;
    let n = 0;
    try {
      for (; n < 10; n++) {
        await pay(`${catalog.stream.url}/${n}`, catalog.stream.price);
        spent += Number(catalog.stream.price);
        $("stream-progress").value = n + 1;
        $("stream-cost").textContent = `Watched ${n + 1} chunks for ${spent.toFixed(3)} USDC`;
      }
    } catch (e) {
      status(`The stream stopped at chunk ${n + 1}: ` + describe(e), true);
    } finally {
      $("watch").disabled = false;
    }
  });
  $("close").addEventListener("click", async () => {
    $("close").disabled = true;
    try {
      if (restoring) await restoring;
      paying++;
      const refunded = await t.refund(catalog.articles[0].url).finally(() => paying--);
      status(`Channel closed: ${(Number(refunded) / 1e6).toFixed(2)} USDC returned to your wallet.`);
    } catch (e) {
      status("Refund failed: " + describe(e), true);
    }
    await refreshBalance().catch(() => undefined);
  });
  // The channel's config and session key as a file: with it the deposit can be withdrawn from the escrow
  // even if this browser's data is cleared or the publisher stops answering.
  $("backup").addEventListener("click", async () => {
    try {
      const backup = await t.backup();
      const blob = new Blob([JSON.stringify(backup, null, 2)], { type: "application/json" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `tollway-channel-backup-${backup.createdAt.slice(0, 10)}.json`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
      status("Backup saved. Keep the file private: it can spend what is left in the channel.");
    } catch (e) {
      status("Backup failed: " + describe(e), true);
    }
  });
  // A backup file brings the channel back: its key and config return to this browser, which then pays on
  // and can close that channel again (no second deposit).
  $("restore").addEventListener("click", () => $("restore-file").click());
  $("restore-file").addEventListener("change", async () => {
    const file = $("restore-file").files[0];
    $("restore-file").value = "";
    if (!file) return;
    // The connected payer keeps its key until it is replaced below: not while it is paying.
    if (paying > 0 || restoring) return status("Wait for the payment to finish, then restore the backup.", true);
    let done;
    restoring = new Promise((r) => (done = r)); // payments clicked meanwhile wait for it
    try {
      const r = await Tollway.restore({ provider, chainId: catalog.chainId }, JSON.parse(await file.text()));
      t = await Tollway.connect(connectOptions);
      status(`Backup restored: ${r.channels} channel${r.channels === 1 ? "" : "s"} back in this browser.`);
    } catch (e) {
      status("Restore failed: " + describe(e), true);
    } finally {
      restoring = undefined;
      done();
    }
    await refreshBalance().catch(() => undefined);
  });
  try {
    await refreshBalance();
  } catch (e) {
    status("Your channel could not be read: " + describe(e), true);
  }
  document.body.dataset.ready = "true";
})();
