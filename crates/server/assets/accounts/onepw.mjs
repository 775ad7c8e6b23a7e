// The sign-in page's cryptography, in WebCrypto only (a browser's secure context, or
// Node.js for the known-answer tests in tests/onepw.test.mjs):
// - onepw v1 password stretching: PBKDF2-SHA-256 (1,000 rounds) then HKDF;
// - the key fetch: the /account/keys bundle is opened with keys derived from the
//   keyFetchToken, its HMAC checked, and kB unwrapped with unwrapBKey;
// - the Sync scoped key (k, kid) derived from kB;
// - keys_jwe: the scoped key encrypted to the browser's ephemeral P-256 key
//   (compact JWE, ECDH-ES direct key agreement, A256GCM).

const subtle = globalThis.crypto.subtle;
const PREFIX = "identity.mozilla.com/picl/v1/";
const enc = new TextEncoder();

export const OLDSYNC_SCOPE = "https://identity.mozilla.com/apps/oldsync";

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex) {
  if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new Error("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

export function b64url(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function fromB64url(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function xor(a, b) {
  return a.map((x, i) => x ^ b[i]);
}

/** onepw's HKDF: SHA-256, empty salt, info "identity.mozilla.com/picl/v1/<name>". */
export async function hkdf(ikm, name, length) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: enc.encode(PREFIX + name) },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

/** authPW (sent to the server) and unwrapBKey (kept here) from e-mail and password. */
export async function stretch(email, password) {
  const key = await subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
  const quick = new Uint8Array(
    await subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt: enc.encode(PREFIX + "quickStretch:" + email), iterations: 1000 },
      key,
      256,
    ),
  );
  return { authPW: await hkdf(quick, "authPW", 32), unwrapBKey: await hkdf(quick, "unwrapBkey", 32) };
}

/** A token's id, request key and bundle key; `name` is sessionToken or keyFetchToken. */
export async function tokenKeys(token, name) {
  const out = await hkdf(token, name, 96);
  return { id: out.slice(0, 32), authKey: out.slice(32, 64), bundleKey: out.slice(64, 96) };
}

/** kA and wrapKb from the /account/keys bundle; throws if its MAC does not match. */
export async function openBundle(bundleKey, bundle) {
  if (bundle.length !== 96) throw new Error("the key bundle has the wrong length");
  const keys = await hkdf(bundleKey, "account/keys", 96);
  const hmacKey = await subtle.importKey("raw", keys.slice(0, 32), { name: "HMAC", hash: "SHA-256" }, false, [
    "verify",
  ]);
  const ct = bundle.slice(0, 64);
  // subtle.verify compares in constant time.
  if (!(await subtle.verify("HMAC", hmacKey, bundle.slice(64), ct))) {
    throw new Error("the key bundle's MAC does not match");
  }
  const plain = xor(ct, keys.slice(32));
  return { kA: plain.slice(0, 32), wrapKb: plain.slice(32) };
}

export function unwrapKb(wrapKb, unwrapBKey) {
  return xor(wrapKb, unwrapBKey);
}

/** kB wrapped for a new password (a password change keeps kB, so the Sync data stays readable). */
export function wrapKb(kB, unwrapBKey) {
  return xor(kB, unwrapBKey);
}

/** The Sync key: k = HKDF(kB, "oldsync", 64), kid = "<keysChangedAt ms>-<b64url(SHA-256(kB)[0:16])>". */
export async function syncKey(kB, keysChangedAt) {
  const k = await hkdf(kB, "oldsync", 64);
  const digest = new Uint8Array(await subtle.digest("SHA-256", kB));
  return { k: b64url(k), kid: `${keysChangedAt}-${b64url(digest.slice(0, 16))}` };
}

function u32(n) {
  return new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
}

/** RFC 7518 §4.6.2 Concat KDF for ECDH-ES direct agreement: no PartyU/V info. */
export async function concatKdf(z, enc) {
  const alg = new TextEncoder().encode(enc);
  const parts = [u32(1), z, u32(alg.length), alg, u32(0), u32(0), u32(256)];
  const input = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    input.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await subtle.digest("SHA-256", input));
}

/** `plaintext` (an object) encrypted to `keysJwk` (base64url of the browser's public JWK). */
export async function keysJwe(keysJwk, plaintext) {
  const peerJwk = JSON.parse(new TextDecoder().decode(fromB64url(keysJwk)));
  const peer = await subtle.importKey("jwk", { kty: "EC", crv: "P-256", x: peerJwk.x, y: peerJwk.y }, { name: "ECDH", namedCurve: "P-256" }, false, []);
  const eph = await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, eph.privateKey, 256));
  const epk = await subtle.exportKey("jwk", eph.publicKey);
  const header = { alg: "ECDH-ES", enc: "A256GCM", epk: { kty: "EC", crv: "P-256", x: epk.x, y: epk.y } };
  const protectedHeader = b64url(enc.encode(JSON.stringify(header)));
  const cek = await subtle.importKey("raw", await concatKdf(z, "A256GCM"), "AES-GCM", false, ["encrypt"]);
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const sealed = new Uint8Array(
    await subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: enc.encode(protectedHeader), tagLength: 128 },
      cek,
      enc.encode(JSON.stringify(plaintext)),
    ),
  );
  const ct = sealed.slice(0, sealed.length - 16);
  const tag = sealed.slice(sealed.length - 16);
  // The encrypted-key segment is empty: with direct agreement the CEK is the KDF's output.
  return [protectedHeader, "", b64url(iv), b64url(ct), b64url(tag)].join(".");
}

/** What the page hands Firefox for Sync: the scoped-key map it encrypts into keys_jwe. */
export async function scopedKeys(kB, keysChangedAt) {
  const { k, kid } = await syncKey(kB, keysChangedAt);
  return { [OLDSYNC_SCOPE]: { kty: "oct", scope: OLDSYNC_SCOPE, k, kid } };
}
