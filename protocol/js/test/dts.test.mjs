// chorus.d.ts and chorus.js describe the same module: every declared export, method and
// property of the public classes exists in the JavaScript, and every export of the
// JavaScript is declared.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as sdk from "../chorus.js";

const dts = readFileSync(new URL("../chorus.d.ts", import.meta.url), "utf8");

/** Members declared in `declare class NAME ... { ... }` (methods and properties). */
function members(name) {
  const start = dts.indexOf(`export declare class ${name} `);
  assert.ok(start >= 0, `chorus.d.ts declares ${name}`);
  const body = dts.slice(dts.indexOf("{", start) + 1, dts.indexOf("\n}", start));
  const out = new Set();
  for (const line of body.split("\n")) {
    const m = /^  (?:readonly |static )?([A-Za-z_]\w*)[?(:<]/.exec(line);
    if (m && m[1] !== "constructor") out.add(m[1]);
  }
  return out;
}

test("every export of chorus.js is declared in chorus.d.ts and the other way round", () => {
  const declared = new Set([...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(sdk).sort());
});

test("the declared members of Chorus, Room and ChorusError exist at run time", () => {
  class FakeWs {}
  const client = new sdk.Chorus({ url: "ws://127.0.0.1:1/ws", WebSocket: FakeWs });
  const room = client.room("general");
  const err = new sdk.ChorusError("bad_request", "x");
  for (const [name, obj] of [["Chorus", client], ["Room", room], ["ChorusError", err]]) {
    for (const m of members(name)) {
      const has = m in obj || m in obj.constructor;
      assert.ok(has, `${name}.${m} is declared in chorus.d.ts but missing in chorus.js`);
    }
  }
  for (const m of ["on", "off"]) assert.equal(typeof client[m], "function");
});
