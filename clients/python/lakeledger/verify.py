#!/usr/bin/env python3
"""Independent verifier for lakeledger audit export packages.

Standard library only, written from the format description in the `lakeledger-audit`
crate docs (audit/src/{leaf,merkle,note,package}.rs), not from the Rust code, so that a
passing run shows the format is specified well enough to re-implement.

    verify_audit_package.py PACKAGE --key 'name+id+base64' [--key ...] [--trusted-checkpoint FILE]

PACKAGE is a package directory, the single-file JSON form, or a merged package of several
replicas' logs (a directory with merged.json; give each replica's key). Prints PASS or
"FAIL at seq N: reason" and exits 0 or 1.

Ed25519 verification is implemented here from RFC 8032 (pure Python integers), since the
standard library has no Ed25519.
"""

import argparse
import base64
import hashlib
import json
import os
import struct
import sys

# ---- Ed25519 (RFC 8032 section 5.1.7) -------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def _decompress(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, p):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _equal(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


_GY = 4 * pow(5, P - 2, P) % P
_G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % P)


def ed25519_verify(public, msg, sig):
    if len(public) != 32 or len(sig) != 64:
        return False
    a = _decompress(public)
    r = _decompress(sig[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + public + msg).digest(), "little") % L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


# ---- signed notes and checkpoints ------------------------------------------------------


class VerifyError(Exception):
    def __init__(self, reason, seq=None):
        super().__init__(reason)
        self.seq = seq
        self.reason = reason

    def __str__(self):
        return f"FAIL at seq {self.seq}: {self.reason}" if self.seq is not None else f"FAIL: {self.reason}"


def parse_verifier_key(text):
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise VerifyError(f"verifier key {text!r} is not <name>+<id>+<key>")
    name, key_id, b64 = parts
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 33 or raw[0] != 1:
        raise VerifyError("verifier key is not an Ed25519 key")
    digest = hashlib.sha256(name.encode() + b"\n" + raw).digest()
    if digest[:4].hex() != key_id:
        raise VerifyError("verifier key id does not match its key")
    return (name, bytes.fromhex(key_id), raw[1:])


def open_note(note, keys):
    """Returns the note text if a trusted key signed it."""
    split = note.rfind("\n\n")
    if split < 0:
        raise VerifyError("note has no blank line before its signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs.endswith("\n"):
        raise VerifyError("note signatures are not newline-terminated")
    ok = False
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise VerifyError(f"malformed signature line {line!r}")
        name, _, b64 = line[2:].partition(" ")
        blob = base64.b64decode(b64)
        for kname, kid, public in keys:
            if kname == name and kid == blob[:4]:
                if not ed25519_verify(public, text.encode(), blob[4:]):
                    raise VerifyError(f"signature by {name} does not verify")
                ok = True
    if not ok:
        raise VerifyError("checkpoint is not signed by a trusted key")
    return text


def parse_checkpoint(note, keys):
    lines = open_note(note, keys).split("\n")
    if len(lines) < 4 or not lines[1].isdigit():
        raise VerifyError("checkpoint body is malformed")
    root = base64.b64decode(lines[2])
    if len(root) != 32:
        raise VerifyError("checkpoint root is not 32 bytes")
    return lines[0], int(lines[1]), root


# ---- RFC 6962 --------------------------------------------------------------------------


def leaf_hash(b):
    return hashlib.sha256(b"\x00" + b).digest()


def node_hash(a, b):
    return hashlib.sha256(b"\x01" + a + b).digest()


class CompactRange:
    """The roots of the perfect subtrees covering the leaves so far, left to right; their
    right-to-left fold is the RFC 6962 root. O(log n) memory, O(1) amortised per leaf."""

    def __init__(self):
        self.size = 0
        self.stack = []  # (height, hash)

    def push(self, h):
        height = 0
        while self.stack and self.stack[-1][0] == height:
            h = node_hash(self.stack.pop()[1], h)
            height += 1
        self.stack.append((height, h))
        self.size += 1

    def root(self):
        if not self.stack:
            return hashlib.sha256(b"").digest()
        r = self.stack[-1][1]
        for _, h in reversed(self.stack[:-1]):
            r = node_hash(h, r)
        return r


def root_from_inclusion(index, size, leaf, proof):
    if index >= size:
        raise VerifyError("index beyond tree size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerifyError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError("inclusion proof too short")
    return r


def verify_consistency(old, new, old_root, new_root, proof):
    if old > new:
        raise VerifyError("consistency sizes go backwards")
    if old == new:
        if proof or old_root != new_root:
            raise VerifyError("consistency proof for equal sizes is wrong")
        return
    if old == 0:
        if proof:
            raise VerifyError("consistency proof from an empty tree must be empty")
        return
    if not proof:
        raise VerifyError("consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerifyError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise VerifyError("consistency proof does not match the roots")


# ---- the package -----------------------------------------------------------------------

RECORD_TYPES = {0: "genesis", 1: "event", 2: "recovery", 3: "startup", 4: "shutdown", 5: "key_rotation"}
FILES = ["leaves.jsonl", "checkpoints.jsonl", "proofs.json", "keys.txt"]
# Version 2 carries each record's inclusion proof on its line ("inclusion"); version 1
# gathered them in proofs.json under "inclusion", keyed by seq.
FORMATS = ["lakeledger-audit-package/1", "lakeledger-audit-package/2"]


def read_package(path):
    if os.path.isdir(path):
        files = {}
        for name in ["manifest.json"] + FILES:
            p = os.path.join(path, name)
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    files[name] = f.read()
        return files
    with open(path, encoding="utf-8") as f:
        return json.load(f)["files"]


def decode_leaf(b, seq):
    if len(b) < 54 or b[0] != 1:
        raise VerifyError("leaf header is malformed", seq)
    rtype, lseq, ts = b[1], *struct.unpack(">Qq", b[2:18])
    prev, (plen,) = b[18:50], struct.unpack(">I", b[50:54])
    if plen != len(b) - 54 or rtype not in RECORD_TYPES:
        raise VerifyError("leaf length or type is wrong", seq)
    return RECORD_TYPES[rtype], lseq, ts, prev, b[54:]


def verify(files, keys, kept_note=None):
    manifest = json.loads(files["manifest.json"])
    if manifest.get("format") not in FORMATS:
        raise VerifyError(f"manifest format is {manifest.get('format')!r}, expected one of {FORMATS}")
    for name in FILES:
        if hashlib.sha256(files[name].encode()).hexdigest() != manifest["files"][name]:
            raise VerifyError(f"{name} does not match its hash in the manifest")
    origin, complete, end_size = manifest["origin"], manifest["complete"] is True, manifest["end_size"]

    records = []
    for line in files["leaves.jsonl"].splitlines():
        v = json.loads(line)
        seq = v["seq"]
        b = base64.b64decode(v["leaf"])
        rtype, lseq, ts, prev, payload = decode_leaf(b, seq)
        if lseq != seq:
            raise VerifyError(f"the leaf bytes say seq {lseq}", seq)
        h = leaf_hash(b)
        if v["leaf_hash"] != h.hex():
            raise VerifyError("leaf_hash is not the hash of the leaf bytes", seq)
        if (v["record_type"], v["ts_unix_ns"], v["prev_leaf"], v["payload"]) != (rtype, ts, prev.hex(), json.loads(payload)):
            raise VerifyError("the decoded view does not match the leaf bytes", seq)
        rotation = None
        if rtype == "key_rotation":
            p = json.loads(payload)
            rotation = (p["old_key"], p["new_key"])
        records.append((seq, h, prev, rotation, v.get("inclusion")))

    for i, (seq, h, prev, _, _) in enumerate(records):
        if i > 0:
            pseq, ph = records[i - 1][0], records[i - 1][1]
            if seq <= pseq:
                raise VerifyError(f"record {seq} appears again or out of order", seq)
            if seq == pseq + 1 and prev != ph:
                raise VerifyError(f"record {pseq} does not match the hash that record {seq} links to", pseq)
        if complete:
            if seq != i:
                raise VerifyError(f"record {i} is missing", i)
            if i == 0 and prev != bytes(32):
                raise VerifyError("record 0 links to a previous record", 0)
    if complete and len(records) < end_size:
        raise VerifyError("the package ends before its checkpoint", len(records))

    trusted = [parse_verifier_key(k) for k in keys]
    trusted_text = set(keys)
    hashes = [r[1] for r in records]
    tree = CompactRange()
    kept_size, kept_root = None, None
    if kept_note is not None:
        korigin, kept_size, kept_root = parse_checkpoint(kept_note, trusted)
        if korigin != origin:
            raise VerifyError("the kept checkpoint is for another log")
    kept_checked = False
    cps = []
    for line in files["checkpoints.jsonl"].splitlines():
        note = json.loads(line)["note"]
        corigin, size, root = parse_checkpoint(note, trusted)
        if corigin != origin:
            raise VerifyError("checkpoint origin differs from the package's")
        if cps and size < cps[-1][0]:
            raise VerifyError("checkpoints are not in increasing size")
        if complete:
            if size > len(hashes):
                raise VerifyError("a checkpoint covers records the package lacks", len(hashes))
            first = cps[-1][0] if cps else 0
            while tree.size < size:
                if tree.size == kept_size:
                    kept_checked = True
                    if tree.root() != kept_root:
                        raise VerifyError("history was rewritten: records differ from the kept checkpoint")
                tree.push(hashes[tree.size])
            if tree.root() != root:
                raise VerifyError(f"records up to {size} do not match the signed checkpoint", first)
            # Trust passes to a rotated-in key once a checkpoint by a trusted key covers it.
            for r in records[first:size]:
                if r[3] and r[3][0] in trusted_text and r[3][1] not in trusted_text:
                    trusted.append(parse_verifier_key(r[3][1]))
                    trusted_text.add(r[3][1])
        cps.append((size, root))
    if not cps or cps[-1][0] != end_size:
        raise VerifyError("the last checkpoint does not cover the manifest's end_size")
    end_root = cps[-1][1]

    proofs = json.loads(files["proofs.json"])
    consistency = {(c["old"], c["new"]): [bytes.fromhex(x) for x in c["proof"]] for c in proofs["consistency"]}
    if not complete:
        for seq, h, _, _, inline in records:
            proof = inline if inline is not None else proofs.get("inclusion", {}).get(str(seq))
            if proof is None or root_from_inclusion(seq, end_size, h, [bytes.fromhex(x) for x in proof]) != end_root:
                raise VerifyError("record is not in the log of the end checkpoint", seq)
        for (a, ra), (b, rb) in zip(cps, cps[1:]):
            if (a, b) not in consistency:
                raise VerifyError(f"no consistency proof from {a} to {b}")
            verify_consistency(a, b, ra, rb, consistency[(a, b)])

    if kept_note is not None:
        ksize, kroot = kept_size, kept_root
        if ksize > end_size:
            raise VerifyError("the log is shorter than the kept checkpoint: records were removed", end_size)
        if complete:
            if not kept_checked and (ksize != end_size or kroot != end_root):
                raise VerifyError("history was rewritten: records differ from the kept checkpoint")
        else:
            if (ksize, end_size) not in consistency:
                raise VerifyError(f"no consistency proof from the kept size {ksize}")
            verify_consistency(ksize, end_size, kroot, end_root, consistency[(ksize, end_size)])
    return len(records), end_size


MERGED_FORMAT = "lakeledger-audit-merged/1"


def verify_merged(path, keys):
    """A merged package (audit/src/merge.rs): each replica's log verified on its own, then
    the timeline checked to hold every record of every log once, ordered by
    (ts_unix_ns, log, seq), with its leaf hash."""
    with open(os.path.join(path, "merged.json"), encoding="utf-8") as f:
        merged = json.load(f)
    if merged.get("format") != MERGED_FORMAT:
        raise VerifyError(f"merged.json format is {merged.get('format')!r}, expected {MERGED_FORMAT!r}")
    expected = []
    for i, log in enumerate(merged["logs"]):
        if log["dir"] != f"logs/{i}":
            raise VerifyError(f"log {i}: dir {log['dir']!r} is not logs/{i}")
        sub = os.path.join(path, log["dir"])
        with open(os.path.join(sub, "manifest.json"), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != log["manifest_sha256"]:
                raise VerifyError(f"log {i}: its manifest differs from the one merged.json names")
        files = read_package(sub)
        try:
            n, size = verify(files, keys)
        except VerifyError as e:
            raise VerifyError(f"log {i} ({log.get('origin')}): {e}")
        if (n, size) != (log["records"], log["end_size"]):
            raise VerifyError(f"log {i}: merged.json's record count or size differs from its package")
        for line in files["leaves.jsonl"].splitlines():
            v = json.loads(line)
            expected.append((v["ts_unix_ns"], i, v["seq"], v["leaf_hash"]))
    expected.sort()
    with open(os.path.join(path, "timeline.jsonl"), "rb") as f:
        text = f.read()
    if hashlib.sha256(text).hexdigest() != merged["timeline_sha256"]:
        raise VerifyError("timeline.jsonl differs from the one merged.json names")
    lines = [json.loads(l) for l in text.decode("utf-8").splitlines() if l]
    if len(lines) != len(expected):
        raise VerifyError(f"the timeline holds {len(lines)} records; the logs hold {len(expected)}")
    for n, (got, want) in enumerate(zip(lines, expected)):
        if (got["ts_unix_ns"], got["log"], got["seq"], got["leaf_hash"]) != want:
            raise VerifyError(f"timeline line {n + 1}: expected log {want[1]} seq {want[2]}")
    return len(expected), len(merged["logs"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("package")
    ap.add_argument("--key", action="append", required=True)
    ap.add_argument("--trusted-checkpoint")
    args = ap.parse_args()
    kept = None
    if args.trusted_checkpoint:
        with open(args.trusted_checkpoint, encoding="utf-8") as f:
            kept = f.read()
    try:
        if os.path.isdir(args.package) and os.path.exists(os.path.join(args.package, "merged.json")):
            n, logs = verify_merged(args.package, args.key)
            print(f"PASS: {n} records of {logs} logs, each verified, timeline complete and in order")
            return 0
        n, size = verify(read_package(args.package), args.key, kept)
    except VerifyError as e:
        print(e)
        return 1
    except (KeyError, ValueError, TypeError) as e:
        print(f"FAIL: package is malformed: {e!r}")
        return 1
    print(f"PASS: {n} records, log size {size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
