import { expect } from "chai";
import express from "express";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { interceptResponse, manageResponsePrototype } from "../../node/payee/middleware";

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
