// Known-answer tests of the sign-in page's cryptography (onepw.mjs), run with Node.js's
// WebCrypto: `node --test crates/server/assets/accounts/tests/`. The vectors are
// Mozilla's published onepw v1 ones and this server's own (vectors.json), which the Rust
// side checks too (accounts/onepw.rs), so page and server cannot drift apart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as o from "../onepw.mjs";

const v = JSON.parse(readFileSync(new URL("../vectors.json", import.meta.url)));
const subtle = globalThis.crypto.subtle;

test("password stretching gives Mozilla's onepw v1 answers", async () => {
  const { authPW, unwrapBKey } = await o.stretch(v.mozilla.email, v.mozilla.password);
  assert.equal(o.toHex(authPW), v.mozilla.authPW);
  assert.equal(o.toHex(unwrapBKey), v.mozilla.unwrapBKey);
});

test("the server's key bundle opens to kA and wrapKb, and kB and the Sync key follow", async () => {
  const keys = await o.tokenKeys(o.fromHex(v.server.keyFetchToken), "keyFetchToken");
  const { kA, wrapKb } = await o.openBundle(keys.bundleKey, o.fromHex(v.server.bundle));
  assert.equal(o.toHex(kA), v.server.kA);
  assert.equal(o.toHex(wrapKb), v.server.wrapKb);
  const kB = o.unwrapKb(wrapKb, o.fromHex(v.mozilla.unwrapBKey));
  assert.equal(o.toHex(kB), v.server.kB);
  const { k, kid } = await o.syncKey(kB, v.server.keysChangedAt);
  assert.equal(k, v.server.k);
  assert.equal(kid, v.server.kid);
  assert.match(kid, /^[1-9][0-9]*-[A-Za-z0-9_-]{22}$/, "Firefox's validScopedKeys shape, unpadded");
});

test("a bundle with one changed byte is refused", async () => {
  const keys = await o.tokenKeys(o.fromHex(v.server.keyFetchToken), "keyFetchToken");
  const bundle = o.fromHex(v.server.bundle);
  bundle[3] ^= 1;
  await assert.rejects(o.openBundle(keys.bundleKey, bundle), /MAC/);
});

test("session tokens derive the id and Hawk key the server keeps", async () => {
  const keys = await o.tokenKeys(o.fromHex(v.server.sessionToken), "sessionToken");
  assert.equal(o.toHex(keys.id), v.server.sessionTokenId);
  assert.equal(o.toHex(keys.authKey), v.server.sessionAuthKey);
});

// The browser's side of keys_jwe, as Firefox's jwcrypto does it: its ephemeral P-256 key
// decrypts what the page encrypted (ECDH-ES, Concat KDF with "A256GCM", AAD = header).
test("keys_jwe is a compact ECDH-ES/A256GCM JWE the browser's key opens", async () => {
  const browser = await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", browser.publicKey);
  const keysJwk = o.b64url(new TextEncoder().encode(JSON.stringify({ kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y })));
  const scoped = await o.scopedKeys(o.fromHex(v.server.kB), v.server.keysChangedAt);
  const jwe = await o.keysJwe(keysJwk, scoped);
  const [header64, encryptedKey, iv, ct, tag] = jwe.split(".");
  assert.equal(encryptedKey, "", "direct key agreement: no encrypted key");
  const header = JSON.parse(new TextDecoder().decode(o.fromB64url(header64)));
  assert.equal(header.alg, "ECDH-ES");
  assert.equal(header.enc, "A256GCM");
  assert.equal(header.apu, undefined);
  const epk = await subtle.importKey("jwk", header.epk, { name: "ECDH", namedCurve: "P-256" }, false, []);
  const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: epk }, browser.privateKey, 256));
  const cek = await subtle.importKey("raw", await o.concatKdf(z, "A256GCM"), "AES-GCM", false, ["decrypt"]);
  const sealed = new Uint8Array([...o.fromB64url(ct), ...o.fromB64url(tag)]);
  const plain = await subtle.decrypt(
    { name: "AES-GCM", iv: o.fromB64url(iv), additionalData: new TextEncoder().encode(header64), tagLength: 128 },
    cek,
    sealed,
  );
  const keys = JSON.parse(new TextDecoder().decode(plain));
  const sync = keys[o.OLDSYNC_SCOPE];
  assert.deepEqual(sync, { kty: "oct", scope: o.OLDSYNC_SCOPE, k: v.server.k, kid: v.server.kid });
});

// The framing byte by byte: round 1, Z, len+"A256GCM", empty PartyUInfo and PartyVInfo,
// then the key length in bits (256) as SuppPubInfo.
test("the Concat KDF frames its input as RFC 7518 §4.6.2 says", async () => {
  const z = new Uint8Array(32).fill(9);
  const expected = new Uint8Array(
    await subtle.digest(
      "SHA-256",
      new Uint8Array([0, 0, 0, 1, ...z, 0, 0, 0, 7, ...new TextEncoder().encode("A256GCM"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
    ),
  );
  assert.deepEqual(await o.concatKdf(z, "A256GCM"), expected);
});

test("a password change re-wraps the same kB under the new password", async () => {
  const keys = await o.tokenKeys(o.fromHex(v.server.keyFetchToken), "keyFetchToken");
  const { wrapKb } = await o.openBundle(keys.bundleKey, o.fromHex(v.server.bundle));
  const kB = o.unwrapKb(wrapKb, o.fromHex(v.mozilla.unwrapBKey));
  const fresh = await o.stretch(v.mozilla.email, "another password entirely");
  const rewrapped = o.wrapKb(kB, fresh.unwrapBKey);
  assert.notEqual(o.toHex(rewrapped), o.toHex(wrapKb));
  assert.equal(o.toHex(o.unwrapKb(rewrapped, fresh.unwrapBKey)), v.server.kB);
});
