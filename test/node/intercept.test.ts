import { expect } from "chai";
import express from "express";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { gzipSync } from "node:zlib";
import { interceptResponse, manageResponsePrototype, paymentMiddleware, type PaidRequestContext } from "../../node/payee/middleware";

/** One express app on loopback whose single route runs `handle`; returns its URL and a closer. */
async function serve(handle: (req: express.Request, res: express.Response) => void) {
  const app = express();
  app.get("/x", handle);
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe("holding a paid response (interceptResponse)", () => {
  it("a client already gone when the hold starts aborts it at once: no decision, the reservation released", async () => {
    const events: string[] = [];
    const s = await serve((req, res) => {
      req.socket.destroy();
      setImmediate(() => {
        manageResponsePrototype(res);
        const open = interceptResponse(res, async () => void events.push("decide"), () => events.push("abort"));
        events.push(`open ${open}`);
        res.send("late");
      });
    });
    await fetch(s.url).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    await s.close();
    expect(events).to.deep.equal(["abort", "open false"]);
  });

  it("pipelined requests: a client that goes away aborts the one waiting behind the other too (it has no socket of its own yet)", async () => {
    const events: string[] = [];
    const s = await serve((req, res) => {
      manageResponsePrototype(res);
      interceptResponse(res, async () => void events.push(`decide ${req.query.n}`), () => events.push(`abort ${req.query.n}`));
      setTimeout(() => res.send("late"), 150);
    });
    const u = new URL(s.url);
    const sock = net.connect(Number(u.port), u.hostname);
    await new Promise<void>((r) => sock.once("connect", () => r()));
    sock.write("GET /x?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /x?n=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise((r) => setTimeout(r, 50));
    sock.destroy();
    await new Promise((r) => setTimeout(r, 300));
    await s.close();
    expect(events.sort()).to.deep.equal(["abort 1", "abort 2"]);
  });

  it("a header node would refuse throws in the handler, before anything is decided (not after the charge)", async () => {
    const events: string[] = [];
    const s = await serve((_req, res) => {
      manageResponsePrototype(res);
      interceptResponse(res, async (status) => void events.push(`decide ${status}`), () => events.push("abort"));
      try {
        res.writeHead(200, { "X-Bad": "a\nb" });
      } catch (err) {
        events.push((err as { code?: string }).code ?? "threw");
      }
      try {
        (res.writeHead as (...a: unknown[]) => unknown)(200, [["X-A", "1"]]); // nested pairs: node refuses them once headers are set
      } catch (err) {
        events.push((err as { code?: string }).code ?? "threw");
      }
      try {
        res.write(123 as unknown as string);
      } catch {
        events.push("bad chunk");
      }
      res.status(500).send("handler failed");
    });
    const r = await fetch(s.url);
    expect(r.status).to.equal(500);
    await s.close();
    expect(events).to.deep.equal(["ERR_INVALID_CHAR", "ERR_INVALID_ARG_VALUE", "bad chunk", "decide 500"]);
  });

  it("every header form node accepts in writeHead is held and replayed as node would send it", async () => {
    const forms: unknown[] = [{ "X-A": "1" }, ["X-A", "1"]];
    for (const headers of forms) {
      let decided = 0;
      const s = await serve((_req, res) => {
        manageResponsePrototype(res);
        interceptResponse(res, async () => void decided++, () => {});
        (res.writeHead as (...a: unknown[]) => unknown)(201, "Made", headers);
        res.end("body");
      });
      const r = await fetch(s.url);
      expect(r.status, JSON.stringify(headers)).to.equal(201);
      expect(r.headers.get("x-a")).to.equal("1");
      expect(await r.text()).to.equal("body");
      await s.close();
      expect(decided).to.equal(1);
    }
  });

  it("a handler that never answers is cut off after the timeout: connection closed, nothing decided, reservation released", async () => {
    const events: string[] = [];
    const s = await serve((_req, res) => {
      manageResponsePrototype(res);
      interceptResponse(res, async () => void events.push("decide"), () => events.push("abort"), undefined, 100);
      // never answers
    });
    // without the timeout this fetch would never settle (and mocha would fail the test)
    const err = await fetch(s.url).then(() => undefined, (e: Error) => e);
    expect(err, "the connection is closed").to.be.instanceOf(Error);
    await s.close();
    expect(events).to.deep.equal(["abort"]);
  });

  it("a wrapper another middleware installs after the hold is still in place once the response is through", async () => {
    let result: { laterStillInPlace: boolean; laterCalls: number } | undefined;
    const s = await serve((_req, res) => {
      // an earlier middleware's own-property wrapper forces the own-property path
      const end0 = res.end;
      res.end = function (this: express.Response, ...a: unknown[]) {
        return (end0 as (...x: unknown[]) => express.Response).apply(this, a);
      } as typeof res.end;
      interceptResponse(res, async () => {}, () => {});
      const held = res.end;
      let laterCalls = 0;
      const later = function (this: express.Response, ...a: unknown[]) {
        laterCalls++;
        return (held as (...x: unknown[]) => express.Response).apply(this, a);
      } as typeof res.end;
      res.end = later;
      res.on("finish", () => void (result = { laterStillInPlace: res.end === later, laterCalls }));
      res.send("ok");
    });
    const r = await fetch(s.url);
    expect(await r.text()).to.equal("ok");
    await s.close();
    expect(result).to.deep.equal({ laterStillInPlace: true, laterCalls: 1 });
  });
});

const A = "0x" + "11".repeat(20);

/** A well-formed voucher PAYMENT-SIGNATURE; the fake payee below accepts any. */
const voucherHeader = Buffer.from(
  JSON.stringify({
    x402Version: 2,
    accepted: { scheme: "batch-settlement", network: "eip155:31337", amount: "10", asset: A, payTo: A, maxTimeoutSeconds: 60, extra: { receiverAuthorizer: A, withdrawDelay: 900 } },
    payload: {
      type: "voucher",
      channelConfig: { payer: A, payerAuthorizer: A, receiver: A, receiverAuthorizer: A, token: A, withdrawDelay: 900, salt: "0x" + "00".repeat(32) },
      voucher: { channelId: "0x" + "22".repeat(32), maxClaimableAmount: "10", signature: "0x" + "33".repeat(65) },
    },
  }),
).toString("base64");

/**
 * A payee that authorizes every voucher for at most 10 and whose commit takes `commitMs` (an fsync):
 * it records what the middleware asked of it in `events`.
 */
function fakePayee(events: string[], commitMs = 30, fail = false) {
  return {
    opts: { asset: { decimals: 6 } },
    requirements: (amount: bigint) => ({ amount }),
    authorize: async () => {
      events.push("authorize");
      return { channelId: "0x", payer: A, maxCharge: 10n, voucherMax: 10n, signature: "0x", settled: false };
    },
    commit: async (r: { settled: boolean }, amount: bigint, ctx: { route: string; resource: string }) => {
      await new Promise((res) => setTimeout(res, commitMs));
      if (fail) throw new Error("IO error: fsync failed");
      r.settled = true;
      events.push(`commit ${amount} ${ctx.resource}`);
      return { success: true, transaction: "", network: "x", payer: A, amount: "", extra: { chargedAmount: String(amount), channelState: {} } };
    },
    release: (r: { settled: boolean }) => {
      r.settled = true;
      events.push("release");
    },
  };
}

/** An express app with the payment middleware over `routes` (a fake payee) and `install`'s handlers. */
async function servePaid(routes: Record<string, string>, install: (app: express.Express) => void, payee: ReturnType<typeof fakePayee>, events: string[], before?: (app: express.Express) => void) {
  const app = express();
  app.set("env", "test"); // express's error handler logs nothing
  before?.(app);
  app.use(paymentMiddleware(routes, payee as never, { onError: (_route, err) => events.push(`onError ${(err as Error).message}`) }));
  install(app);
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const paid = { headers: { "payment-signature": voucherHeader } };

/** A paid request through node's http client (calls `onHeaders` when the headers arrive); its body and whether it reused a kept-alive socket. */
function request(url: string, method: string, onHeaders: (r: http.IncomingMessage) => void, agent?: http.Agent) {
  return new Promise<{ body: string; reused: boolean }>((resolve, reject) => {
    const req = http.request(url, { method, headers: paid.headers, agent }, (r) => {
      onHeaders(r);
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (chunk: string) => void (body += chunk));
      r.on("end", () => resolve({ body, reused: req.reusedSocket }));
      r.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

describe("paid answers through paymentMiddleware (a payee whose commit takes an fsync's time)", () => {
  it("an event stream started with writeHead then flushHeaders is delivered whole after the charge", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x": "10" }, (app) =>
      app.get("/x", (_req, res) => {
        res.writeHead(200, { "Content-Type": "text/event-stream" });
        res.flushHeaders(); // node calls writeHead(statusCode) again while the first is held
        res.write("data: 1\n\n");
        res.end("data: 2\n\n");
      }), fakePayee(events, 5), events);
    const r = await fetch(`${s.url}/x`, paid);
    expect(r.status).to.equal(200);
    expect(r.headers.get("content-type")).to.equal("text/event-stream");
    expect(r.headers.get("payment-response")).to.not.equal(null);
    expect(await r.text()).to.equal("data: 1\n\ndata: 2\n\n");
    await s.close();
    expect(events).to.deep.equal(["authorize", "commit 10 /x"]);
  });

  it("an event stream that waits for its first event has its headers as soon as the charge is committed (flushHeaders while held)", async () => {
    for (const start of ["writeHead", "setHeader"]) {
      const events: string[] = [];
      const s = await servePaid({ "GET /x": "10" }, (app) =>
        app.get("/x", (_req, res) => {
          if (start === "writeHead") res.writeHead(200, { "Content-Type": "text/event-stream" });
          else res.setHeader("Content-Type", "text/event-stream");
          res.flushHeaders();
          setTimeout(() => {
            events.push("first event");
            res.end("data: 1\n\n");
          }, 300);
        }), fakePayee(events, 5), events);
      const answer = await request(`${s.url}/x`, "GET", (r) => events.push(`headers ${r.statusCode} ${r.headers["content-type"]}`));
      await s.close();
      expect(answer.body, start).to.equal("data: 1\n\n");
      expect(events, start).to.deep.equal(["authorize", "commit 10 /x", "headers 200 text/event-stream", "first event"]);
    }
  });

  it("an answer started but not yet ended has its headers once the charge is committed, HEAD, 204 and 304 included, and ends whole on a kept-alive connection", async () => {
    const events: string[] = [];
    let ended = () => {};
    const s = await servePaid({ "GET /x": "10" }, (app) =>
      app.get("/x", (req, res) => {
        res.writeHead(Number(req.query.status), { "X-A": "1" });
        if (req.method === "HEAD") res.flushHeaders();
        setTimeout(() => {
          events.push(`end ${req.method} ${req.query.status}`);
          res.end("body");
          ended();
        }, 200);
      }), fakePayee(events, 1), events);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const reused: boolean[] = [];
    try {
      for (const [method, status] of [["GET", 200], ["GET", 204], ["GET", 304], ["GET", 200], ["HEAD", 200]] as const) {
        const serverEnded = new Promise<void>((r) => (ended = r));
        // A HEAD, 204 or 304 answer is whole at its headers: the client is done before the handler ends.
        const answer = await request(`${s.url}/x?status=${status}`, method, (r) => events.push(`headers ${method} ${r.statusCode} ${r.headers["x-a"]}`), agent);
        await serverEnded;
        reused.push(answer.reused);
        expect(answer.body, `${method} ${status}`).to.equal(method === "GET" && status === 200 ? "body" : "");
        expect(events.slice(-3), `${method} ${status}`).to.deep.equal([`commit 10 /x`, `headers ${method} ${status} 1`, `end ${method} ${status}`]);
      }
    } finally {
      agent.destroy();
      await s.close();
    }
    // HEAD last: node's client does not reuse a socket whose HEAD answer it had whole before the server ended it.
    expect(reused, "each answer was framed right: the next one came on the same connection").to.deep.equal([false, true, true, true, true]);
  });

  it("a wrapper that starts the headers itself on each write (as compression does) is delivered whole", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x": "10" }, (app) =>
      app.get("/x", (_req, res) => {
        const write = res.write;
        res.write = function (this: express.Response, ...a: unknown[]) {
          if (!(this as unknown as { _header?: string })._header) (this as unknown as { _implicitHeader(): void })._implicitHeader();
          return (write as (...x: unknown[]) => boolean).apply(this, a);
        } as typeof res.write;
        res.write("a");
        res.write("b");
        res.end("c");
      }), fakePayee(events, 5), events);
    const r = await fetch(`${s.url}/x`, paid);
    expect(r.status).to.equal(200);
    expect(await r.text()).to.equal("abc");
    await s.close();
    expect(events).to.deep.equal(["authorize", "commit 10 /x"]);
  });

  it("a second writeHead with headers after the answer started throws in the handler, as node would, not after the charge", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x": "10" }, (app) =>
      app.get("/x", (_req, res) => {
        res.writeHead(200, { "Content-Type": "text/plain" });
        try {
          res.writeHead(200, { "X-Late": "1" });
        } catch (err) {
          events.push((err as { code?: string }).code ?? "threw");
        }
        res.end("ok");
      }), fakePayee(events, 5), events);
    const r = await fetch(`${s.url}/x`, paid);
    expect(r.status).to.equal(200);
    expect(r.headers.get("x-late")).to.equal(null);
    expect(await r.text()).to.equal("ok");
    await s.close();
    expect(events).to.deep.equal(["authorize", "ERR_HTTP_HEADERS_SENT", "commit 10 /x"]);
  });

  it("a handler that fails after its first write while the charge is committed: the answer is cut, never a 500 carrying PAYMENT-RESPONSE", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x": "10" }, (app) =>
      app.get("/x", (_req, res, next) => {
        res.write("partial-");
        next(new Error("boom")); // express's finalhandler sets 500 and writes its page: held too
      }), fakePayee(events, 30), events);
    const outcome = await fetch(`${s.url}/x`, paid).then(
      async (r) => `status ${r.status} payment-response ${r.headers.get("payment-response") !== null} body ${await r.text().catch(() => "cut")}`,
      () => "cut",
    );
    await s.close();
    expect(outcome).to.equal("cut");
    // Charged: the answer had started at 200 (as a stream broken after its first byte is).
    expect(events.slice(0, 2)).to.deep.equal(["authorize", "commit 10 /x"]);
    expect(events[2]).to.match(/^onError .*status changed from 200 to 500/);
  });

  it("charge() never throws (an async handler's rejection would take the node down): a whole JS number is an amount, anything else out of range is clamped with a warning", async () => {
    const cases: Array<[unknown, string]> = [
      [11n, "commit 10 /x"],
      [-1n, "commit 0 /x"],
      [7n, "commit 7 /x"],
      [5, "commit 5 /x"], // a JS caller's whole number is taken at its value
      [11, "commit 10 /x"],
      [-1, "commit 0 /x"],
      // Not an amount: the signed maximum, what the payer agreed to pay (a handler bug does not serve free).
      [2.5, "commit 10 /x"],
      [NaN, "commit 10 /x"],
      [2 ** 53, "commit 10 /x"], // not a safe integer: not the amount the handler meant
      ["5", "commit 10 /x"],
      [undefined, "commit 10 /x"],
      [Symbol("x"), "commit 10 /x"],
    ];
    const warnings: string[] = [];
    const onWarning = (w: Error & { code?: string }) => void warnings.push(w.code ?? "");
    process.on("warning", onWarning);
    try {
      for (const [n, expected] of cases) {
        const events: string[] = [];
        const s = await servePaid({ "GET /x": "10" }, (app) =>
          app.get("/x", (_req, res) => {
            (res.locals.tollway as PaidRequestContext).charge(n as bigint);
            res.send("metered");
          }), fakePayee(events, 1), events);
        const r = await fetch(`${s.url}/x`, paid);
        expect(r.status, String(n)).to.equal(200);
        await s.close();
        expect(events, String(n)).to.deep.equal(["authorize", expected]);
      }
      await new Promise((r) => setImmediate(r));
    } finally {
      process.removeListener("warning", onWarning);
    }
    expect(warnings).to.deep.equal(Array(10).fill("TOLLWAY_CHARGE_CLAMPED"));
  });

  it("a paid answer is always no-store, even with a Cache-Control given to writeHead (object or flat list)", async () => {
    const forms: unknown[] = [{ "Cache-Control": "public, max-age=3600", "X-A": "1" }, ["Cache-Control", "public, max-age=3600", "X-A", "1"]];
    for (const headers of forms) {
      const events: string[] = [];
      const s = await servePaid({ "GET /x": "10" }, (app) =>
        app.get("/x", (_req, res) => {
          (res.writeHead as (...a: unknown[]) => unknown)(201, "Made", headers);
          res.end("paid content");
        }), fakePayee(events, 1), events);
      const r = await fetch(`${s.url}/x`, paid);
      expect(r.status).to.equal(201);
      expect(r.statusText).to.equal("Made");
      expect(r.headers.get("cache-control"), JSON.stringify(headers)).to.equal("no-store");
      expect(r.headers.get("x-a")).to.equal("1");
      expect(await r.text()).to.equal("paid content");
      await s.close();
    }
  });

  it("a commit that fails answers a plain JSON 503: none of the handler's headers (gzip, ETag, caching) are left on it", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x": "10", "GET /y": "10" }, (app) => {
      app.get("/x", (_req, res) => {
        res.setHeader("Access-Control-Allow-Origin", "*"); // as a cors middleware sets it
        res.setHeader("Content-Encoding", "gzip");
        res.setHeader("ETag", '"v1"');
        res.setHeader("Content-Disposition", "attachment");
        res.end(gzipSync("paid content"));
      });
      app.get("/y", (_req, res) => {
        res.writeHead(200, { "Content-Encoding": "gzip", "Cache-Control": "public, max-age=60" });
        res.end(gzipSync("paid content"));
      });
    }, fakePayee(events, 1, true), events);
    for (const path of ["/x", "/y"]) {
      const r = await fetch(`${s.url}${path}`, paid);
      expect(r.status, path).to.equal(503);
      for (const name of ["content-encoding", "etag", "content-disposition", "payment-response"]) expect(r.headers.get(name), `${path} ${name}`).to.equal(null);
      expect(r.headers.get("cache-control"), path).to.equal("no-store, no-transform");
      expect(r.headers.get("access-control-expose-headers"), path).to.match(/PAYMENT-RESPONSE/i);
      if (path === "/x") expect(r.headers.get("access-control-allow-origin"), "CORS headers stay").to.equal("*");
      expect(((await r.json()) as { error: string }).error, path).to.equal("unexpected_settle_error");
    }
    await s.close();
  });

  it("after a commit that fails, the handler's later writes (a stream, a wrapper outside ours flushing) are dropped: the 503 alone goes out, and no write after end", async () => {
    const events: string[] = [];
    let wrote: unknown[] = [];
    let wroteOwn: unknown[] = [];
    /** Writes, then streams on after the failed commit has answered 503 (30 ms); `seen` gets what its late write returned and whether the answer had ended. */
    const lateStream = (seen: (r: unknown[]) => void) => (_req: express.Request, res: express.Response) => {
      res.write("paid part 1;");
      setTimeout(() => {
        seen([res.write("paid part 2;"), res.writableEnded]);
        res.end("paid end");
      }, 80);
    };
    const s = await servePaid({ "GET /s": "10", "GET /w": "10", "GET /o": "10" }, (app) => {
      // Held through own properties (a wrapper another middleware put on the response before ours).
      app.get("/o", lateStream((r) => (wroteOwn = r)));
      app.get("/s", lateStream((r) => (wrote = r)));
      // A wrapper installed after the payment middleware (as compression is), whose captured write and end
      // reach ours: its late flush must not follow the 503.
      app.get("/w", (_req, res) => {
        const inner = { write: res.write, end: res.end };
        res.write = ((c: unknown) => (inner.write as (c: unknown) => boolean).call(res, c)) as typeof res.write;
        res.end = ((c?: unknown) => (inner.end as (c?: unknown) => unknown).call(res, c)) as typeof res.end;
        res.write("compressed paid bytes;");
        setTimeout(() => res.end("late flush"), 80);
      });
    }, fakePayee(events, 30, true), events, (app) =>
      app.use((req, res, next) => {
        if (req.path !== "/o") return next();
        const { write, end } = res;
        res.write = function (this: typeof res, ...a: unknown[]) {
          return (write as (...x: unknown[]) => boolean).apply(this, a);
        } as typeof res.write;
        res.end = function (this: typeof res, ...a: unknown[]) {
          return (end as (...x: unknown[]) => unknown).apply(this, a);
        } as typeof res.end;
        next();
      }),
    );
    for (const path of ["/s", "/w", "/o"]) {
      const r = await fetch(`${s.url}${path}`, paid);
      expect(r.status, path).to.equal(503);
      const text = await r.text();
      expect(JSON.parse(text).error, path).to.equal("unexpected_settle_error");
    }
    await new Promise((r) => setTimeout(r, 150)); // the handlers' late writes have run (an uncaught error would fail the test)
    expect(wrote).to.deep.equal([true, true]);
    expect(wroteOwn).to.deep.equal([true, true]);
    await s.close();
  });

  it("a CORS preflight to a route key without a method passes through unpaid; any other OPTIONS is still charged", async () => {
    const events: string[] = [];
    const s = await servePaid({ "/x": "10", "OPTIONS /y": "10" }, (app) => {
      app.get("/x", (_req, res) => void res.send("paid"));
      app.options("/y", (_req, res) => void res.send("options"));
    }, fakePayee(events, 1), events);
    const preflight = { method: "OPTIONS", headers: { Origin: "http://elsewhere", "Access-Control-Request-Method": "GET" } };
    const r = await fetch(`${s.url}/x`, preflight);
    expect(r.status).to.equal(200); // express's automatic OPTIONS answer (Allow: GET, HEAD)
    expect(r.headers.get("allow")).to.match(/GET/);
    expect((await fetch(`${s.url}/x`, { method: "OPTIONS" })).status, "a plain OPTIONS").to.equal(402);
    expect((await fetch(`${s.url}/y`, preflight)).status, "a route that names OPTIONS").to.equal(402);
    expect((await fetch(`${s.url}/x`)).status).to.equal(402);
    await s.close();
    expect(events).to.deep.equal([]);
  });

  it("the ledger's resource is the path, without the query string, capped at 512 characters", async () => {
    const events: string[] = [];
    const s = await servePaid({ "GET /x/*": "10", "GET /r/y": "10" }, (app) => {
      app.get("/x/*", (_req, res) => void res.send("ok"));
      // answered inside a router: express has changed req.baseUrl by the time the charge is committed
      app.use("/r", express.Router().get("/y", (_req, res) => void res.send("ok")));
    }, fakePayee(events, 1), events);
    expect((await fetch(`${s.url}/x/a?token=secret&pad=${"q".repeat(4000)}`, paid)).status).to.equal(200);
    const long = `/x/${"p".repeat(600)}`;
    expect((await fetch(`${s.url}${long}?q=1`, paid)).status).to.equal(200);
    expect((await fetch(`${s.url}/r/y?q=1`, paid)).status).to.equal(200);
    await s.close();
    expect(events).to.deep.equal(["authorize", "commit 10 /x/a", "authorize", `commit 10 ${long.slice(0, 512)}`, "authorize", "commit 10 /r/y"]);
  });
});
