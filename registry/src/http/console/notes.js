// Checks done in the browser with WebCrypto, from the formats' specifications rather than
// the server's word: C2SP signed notes (Ed25519) for audit checkpoints and model
// signatures, and RFC 9162 Merkle inclusion proofs. WebCrypto needs a secure context
// (HTTPS, or the server on localhost).

const te = new TextEncoder();

export function hexToBytes(hex) {
  if (!/^([0-9a-f]{2})*$/i.test(hex)) throw new Error(`not hex: ${hex.slice(0, 16)}…`);
  return Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
}

export function bytesToHex(b) {
  return Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
}

export function b64ToBytes(s) {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function subtle() {
  if (!globalThis.crypto?.subtle) throw new Error("this page is not a secure context (use HTTPS or localhost): WebCrypto is unavailable");
  return crypto.subtle;
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle().digest("SHA-256", bytes));
}

const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// `<name>+<hex key id>+<base64(0x01 || 32-byte Ed25519 key)>`; the id is the first four
// bytes of SHA-256(name || "\n" || 0x01 || key).
export async function parseVerifierKey(text) {
  // The base64 part may itself hold "+": split at the first two only.
  const t = text.trim();
  const first = t.indexOf("+");
  const second = t.indexOf("+", first + 1);
  const [name, id, b64] = first < 0 || second < 0 ? [] : [t.slice(0, first), t.slice(first + 1, second), t.slice(second + 1)];
  if (!name || !id || !b64) throw new Error(`verifier key ${text} is not <name>+<id>+<key>`);
  const raw = b64ToBytes(b64);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error("the verifier key is not an Ed25519 key");
  const digest = await sha256(concat(te.encode(`${name}\n`), raw));
  if (bytesToHex(digest.slice(0, 4)) !== id) throw new Error("the verifier key's id does not match its key");
  const key = await subtle().importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, id: hexToBytes(id), key, text: t };
}

// Returns the note's text when one of `keys` signed it; throws saying why not.
export async function openNote(note, keys) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("the note has no blank line before its signatures");
  const text = note.slice(0, split + 1);
  const sigs = note.slice(split + 2);
  if (!sigs.endsWith("\n")) throw new Error("the note's signatures are not newline-terminated");
  for (const line of sigs.slice(0, -1).split("\n")) {
    if (!line.startsWith("\u2014 ")) throw new Error(`malformed signature line ${line}`);
    const [name, b64] = line.slice(2).split(" ");
    const blob = b64ToBytes(b64);
    for (const k of keys) {
      if (k.name === name && equal(k.id, blob.slice(0, 4))) {
        const ok = await subtle().verify({ name: "Ed25519" }, k.key, blob.slice(4), te.encode(text));
        if (!ok) throw new Error(`the signature by ${name} does not verify`);
        return text;
      }
    }
  }
  throw new Error("the note is not signed by a trusted key");
}

// A checkpoint's origin, size and root, once its signature checks out.
export async function openCheckpoint(note, keys) {
  const lines = (await openNote(note, keys)).split("\n");
  if (lines.length < 4 || !/^\d+$/.test(lines[1])) throw new Error("the checkpoint body is malformed");
  const root = b64ToBytes(lines[2]);
  if (root.length !== 32) throw new Error("the checkpoint root is not 32 bytes");
  return { origin: lines[0], size: Number(lines[1]), root };
}

export const leafHash = (leaf) => sha256(concat(Uint8Array.of(0), leaf));
export const nodeHash = (a, b) => sha256(concat(Uint8Array.of(1), a, b));

// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to.
export async function rootFromInclusion(index, size, leaf, proof) {
  if (index >= size) throw new Error("the record is beyond the tree's size");
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error("the inclusion proof is too long");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the inclusion proof is too short");
  return r;
}

export { equal };
