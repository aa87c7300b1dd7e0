#!/usr/bin/env python3
"""End-to-end checks of ospreyd through the official Python client (aerospike 19.x).

Run by appliance/tests/python_client.rs against a fresh server:

    python3 python_client_test.py --host 127.0.0.1 --port N

Every check uses the client's public API only, except the bin-name check: the
client refuses a 16-character bin name locally, so that check also sends the
write as a raw frame and reads the server's result code.

The script prints one line per check and exits 1 (with the failures listed) if
any check failed, 2 if it could not connect at all.
"""

import argparse
import os
import re
import socket
import struct
import sys
import time
import traceback
import warnings

import aerospike
from aerospike import exception as ex
from aerospike_helpers.operations import operations as op

NS = "test"
NEVER = 4294967295  # what the C client reports as the ttl of a never-expiring record

client = None
ARGS = None


# --------------------------------------------------------------------------
# helpers


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def expect_error(cls, code, fn, *args, **kwargs):
    """Calls fn and requires it to raise exactly `cls` with result code `code`."""
    try:
        fn(*args, **kwargs)
    except ex.AerospikeError as e:
        if type(e) is not cls or e.code != code:
            raise AssertionError(
                f"expected {cls.__name__} (code {code}), got {type(e).__name__} "
                f"(code {e.code}): {e.msg}"
            ) from e
        return e
    raise AssertionError(f"expected {cls.__name__} (code {code}), but the call succeeded")


def key(set_name, user_key):
    return (NS, set_name, user_key)


def missing(k):
    """True when a get of k answers RecordNotFound."""
    try:
        client.get(k)
    except ex.RecordNotFound:
        return True
    return False


def wait_until(cond, seconds, what):
    deadline = time.monotonic() + seconds
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {seconds}s: {what}")
        time.sleep(0.1)


def all_records(records):
    """(key tuple, meta, bins) rows of a scan/query, as a dict user_key -> row."""
    out = {}
    for k, meta, bins in records:
        check(len(k) == 4, f"scan key is not (ns, set, key, digest): {k!r}")
        ns, set_name, user_key, digest = k
        eq(ns, NS, "scan row namespace")
        check(isinstance(digest, (bytes, bytearray)) and len(digest) == 20, f"digest {digest!r}")
        check(user_key is not None, f"stored key missing in scan row {k!r} (written with POLICY_KEY_SEND)")
        check(user_key not in out, f"scan returned key {user_key!r} twice")
        out[(set_name, user_key)] = (meta, bins)
    return out


# --------------------------------------------------------------------------
# checks, run in this order (the scans come first so that the namespace holds
# only the records they write)


def t_connect():
    check(client.is_connected(), "client.is_connected() is False after connect()")
    names = client.get_node_names()
    eq(len(names), 1, "number of nodes")
    # Commands still work on a second, independent client.
    other = aerospike.client({"hosts": [(ARGS.host, ARGS.port)]}).connect()
    try:
        other.put(key("connect", 1), {"a": 1})
        eq(client.get(key("connect", 1))[2], {"a": 1}, "record written by another client")
        client.remove(key("connect", 1))
    finally:
        other.close()


def t_scan():
    send_key = {"key": aerospike.POLICY_KEY_SEND}
    for i in range(30):
        client.put(key("scanA", i), {"i": i, "s": f"a{i}"}, policy=send_key)
    for i in range(20):
        client.put(key("scanB", f"b{i}"), {"i": i}, policy=send_key)

    rows = all_records(client.scan(NS, "scanA").results())
    eq(len(rows), 30, "records in a scan of set scanA")
    for i in range(30):
        meta, bins = rows[("scanA", i)]
        eq(bins, {"i": i, "s": f"a{i}"}, f"scanA row {i}")
        eq(meta["gen"], 1, f"scanA row {i} gen")

    # The same scan through a query without a where clause, selecting one bin.
    q = client.query(NS, "scanB")
    q.select("i")
    rows = all_records(q.results())
    eq(sorted(rows), sorted(("scanB", f"b{i}") for i in range(20)), "keys of a query of set scanB")
    for i in range(20):
        eq(rows[("scanB", f"b{i}")][1], {"i": i}, f"scanB row {i}")

    # The whole namespace (the server is fresh: only these 50 records exist).
    rows = all_records(client.scan(NS).results())
    want = {("scanA", i) for i in range(30)} | {("scanB", f"b{i}") for i in range(20)}
    eq(set(rows), want, "keys of a whole-namespace scan")

    seen = []
    client.query(NS).foreach(lambda rec: seen.append(rec[0][2]))
    eq(len(seen), 50, "records seen by a whole-namespace query foreach")

    # An unknown set is an empty result, not an error.
    eq(client.scan(NS, "no_such_set").results(), [], "scan of an unknown set")


def t_bin_types():
    k = key("types", "all")
    geo = aerospike.GeoJSON({"type": "Point", "coordinates": [-122.25, 37.5]})
    bins = {
        "int": 42,
        "neg": -7,
        "max": 2**63 - 1,
        "min": -(2**63),
        "float": 3.25,
        "str": "héllo wörld",
        "empty": "",
        "bytes": b"\x00\x01\xfe\xff",
        "true": True,
        "false": False,
        "list": [1, "two", 3.5, b"\x04", [5, [6]], {"k": "v"}],
        "map": {"a": 1, "b": [1, 2], "c": {"d": "e"}, 7: "int key"},
        "geo": geo,
    }
    client.put(k, bins)
    _, meta, got = client.get(k)
    eq(meta["gen"], 1, "gen after the first put")
    eq(meta["ttl"], NEVER, "ttl of a record in a default-ttl 0 namespace")
    eq(set(got), set(bins), "bin names")
    for name in ("int", "neg", "max", "min", "float", "str", "empty", "list", "map"):
        eq(got[name], bins[name], f"bin {name}")
        eq(type(got[name]), type(bins[name]), f"type of bin {name}")
    eq(got["bytes"], bins["bytes"], "bin bytes")
    eq(type(got["bytes"]), bytes, "type of bin bytes")
    # The 19.x client sends bools as the boolean particle (17) and reads them back as bool.
    check(got["true"] is True, f"bin true came back as {got['true']!r}")
    check(got["false"] is False, f"bin false came back as {got['false']!r}")
    check(isinstance(got["geo"], aerospike.GeoJSON), f"geo bin came back as {type(got['geo'])}")
    eq(got["geo"].unwrap(), geo.unwrap(), "GeoJSON bin")

    # A bytearray is a blob too.
    client.put(k, {"ba": bytearray(b"xyz")})
    eq(bytes(client.get(k)[2]["ba"]), b"xyz", "bytearray bin")

    # A large string and a large blob round-trip intact.
    big_s = "x" * 100_000
    big_b = os.urandom(200_000)
    client.put(k, {"bigs": big_s, "bigb": big_b})
    _, meta, got = client.get(k)
    eq(got["bigs"], big_s, "100 kB string")
    eq(bytes(got["bigb"]), big_b, "200 kB blob")
    eq(meta["gen"], 3, "gen after three puts")
    eq(got["int"], 42, "earlier bins survive an update")

    # Integer, string and bytes user keys address different records.
    client.put(key("types", 1), {"k": "int"})
    client.put(key("types", "1"), {"k": "str"})
    client.put(key("types", bytearray(b"1")), {"k": "bytes"})
    eq(client.get(key("types", 1))[2], {"k": "int"}, "int key")
    eq(client.get(key("types", "1"))[2], {"k": "str"}, "str key")
    eq(client.get(key("types", bytearray(b"1")))[2], {"k": "bytes"}, "bytes key")
    # A record without a set.
    client.put((NS, None, "no-set"), {"a": 1})
    eq(client.get((NS, None, "no-set"))[2], {"a": 1}, "record without a set")
    client.remove((NS, None, "no-set"))


def t_select():
    k = key("select", 1)
    client.put(k, {"a": 1, "b": "two", "c": 3.0})
    _, meta, bins = client.select(k, ["a", "c"])
    eq(bins, {"a": 1, "c": 3.0}, "select a, c")
    eq(meta["gen"], 1, "select meta gen")
    _, _, bins = client.select(k, ["b", "nope"])
    eq(bins, {"b": "two"}, "select of an existing and a missing bin")
    expect_error(ex.RecordNotFound, 2, client.select, key("select", "missing"), ["a"])


def t_exists():
    k = key("exists", 1)
    client.put(k, {"a": 1})
    client.put(k, {"a": 2})
    _, meta = client.exists(k)
    check(meta is not None, "exists() of a present record gave meta None")
    eq(meta["gen"], 2, "exists meta gen")
    eq(meta["ttl"], NEVER, "exists meta ttl")
    _, meta = client.exists(key("exists", "missing"))
    eq(meta, None, "exists() meta of a missing record")


def t_touch():
    k = key("touch", 1)
    client.put(k, {"a": 1})
    client.touch(k, 100)
    _, meta, bins = client.get(k)
    eq(meta["gen"], 2, "gen after touch")
    check(95 <= meta["ttl"] <= 100, f"ttl after touch(100): {meta['ttl']}")
    eq(bins, {"a": 1}, "bins after touch")
    expect_error(ex.RecordNotFound, 2, client.touch, key("touch", "missing"), 100)
    # touch through operate
    client.operate(k, [op.touch(200)])
    _, meta, _ = client.get(k)
    eq(meta["gen"], 3, "gen after operate touch")
    check(195 <= meta["ttl"] <= 200, f"ttl after operate touch(200): {meta['ttl']}")


def t_operate():
    k = key("operate", 1)
    client.put(k, {"n": 10, "s": "mid", "f": 1.5, "gone": "x", "b": b"\x02"})
    _, meta, bins = client.operate(
        k,
        [
            op.increment("n", 5),
            op.increment("f", 0.25),
            op.append("s", ">"),
            op.prepend("s", "<"),
            op.append("b", b"\x03"),
            op.prepend("b", b"\x01"),
            op.write("w", "new"),
            op.write("gone", None),
            op.increment("fresh", 7),
            op.read("n"),
            op.read("s"),
        ],
    )
    eq(meta["gen"], 2, "gen after operate")
    eq(bins, {"n": 15, "s": "<mid>"}, "bins read by operate (values after the earlier ops)")
    _, _, bins = client.get(k)
    eq(
        bins,
        {"n": 15, "s": "<mid>", "f": 1.75, "b": bins.get("b"), "w": "new", "fresh": 7},
        "record after operate",
    )
    eq(bytes(bins["b"]), b"\x01\x02\x03", "blob after append and prepend")

    # operate() read of all bins, and the convenience wrappers.
    _, _, bins = client.operate(k, [op.read("w"), op.read("nope")])
    eq(bins.get("w"), "new", "operate read of w")
    client.increment(k, "n", -20)
    client.append(k, "s", "!")
    client.prepend(k, "s", "¡")
    _, meta, bins = client.get(k)
    eq((bins["n"], bins["s"]), (-5, "¡<mid>!"), "after increment/append/prepend")
    eq(meta["gen"], 5, "gen after three more writes")

    # operate_ordered answers in op order.
    res = client.operate_ordered(k, [op.read("n"), op.increment("n", 1), op.read("n")])
    eq(res[2], [("n", -5), ("n", -4)], "operate_ordered results (the reads, in op order)")

    # delete the whole record through operate
    client.operate(k, [op.delete()])
    check(missing(k), "record still present after operate delete()")

    # operate with a write on a missing record creates it
    k2 = key("operate", 2)
    _, meta, bins = client.operate(k2, [op.increment("c", 1), op.read("c")])
    eq((meta["gen"], bins), (1, {"c": 1}), "operate on a missing record")
    # a write that leaves no bins removes the record
    client.operate(k2, [op.write("c", None)])
    check(missing(k2), "record with its only bin deleted is still present")
    # reads only, on a missing record
    expect_error(ex.RecordNotFound, 2, client.operate, key("operate", "missing"), [op.read("a")])

    # remove_bin
    k3 = key("operate", 3)
    client.put(k3, {"a": 1, "b": 2})
    client.remove_bin(k3, ["a"])
    eq(client.get(k3)[2], {"b": 2}, "bins after remove_bin")


def t_remove():
    k = key("remove", 1)
    client.put(k, {"a": 1})
    client.remove(k)
    check(missing(k), "record present after remove")
    expect_error(ex.RecordNotFound, 2, client.remove, k)
    # re-create after remove starts again at generation 1
    client.put(k, {"a": 2})
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (1, {"a": 2}), "re-created record")


def t_durable_remove():
    k = key("remove", "durable")
    client.put(k, {"a": 1})
    client.remove(k, policy={"durable_delete": True})
    check(missing(k), "record present after durable remove")
    client.put(k, {"a": 3})
    eq(client.get(k)[2], {"a": 3}, "record written after a durable remove")


def t_exists_policies():
    k = key("policy", 1)
    create = {"exists": aerospike.POLICY_EXISTS_CREATE}
    client.put(k, {"a": 1}, policy=create)
    e = expect_error(ex.RecordExistsError, 5, client.put, k, {"a": 2}, policy=create)
    check(e.code == 5, "code")
    eq(client.get(k)[2], {"a": 1}, "record after a refused create")

    update_only = {"exists": aerospike.POLICY_EXISTS_UPDATE}
    replace_only = {"exists": aerospike.POLICY_EXISTS_REPLACE}
    create_or_replace = {"exists": aerospike.POLICY_EXISTS_CREATE_OR_REPLACE}
    expect_error(ex.RecordNotFound, 2, client.put, key("policy", "m1"), {"a": 1}, policy=update_only)
    expect_error(ex.RecordNotFound, 2, client.put, key("policy", "m2"), {"a": 1}, policy=replace_only)
    check(missing(key("policy", "m1")) and missing(key("policy", "m2")), "a refused write created a record")

    client.put(k, {"b": 2}, policy=update_only)
    eq(client.get(k)[2], {"a": 1, "b": 2}, "update-only merges bins")
    client.put(k, {"c": 3}, policy=replace_only)
    eq(client.get(k)[2], {"c": 3}, "replace-only replaces all bins")
    client.put(k, {"d": 4}, policy=create_or_replace)
    eq(client.get(k)[2], {"d": 4}, "create-or-replace on an existing record")
    client.put(key("policy", "m3"), {"e": 5}, policy=create_or_replace)
    eq(client.get(key("policy", "m3"))[2], {"e": 5}, "create-or-replace on a missing record")


def t_generation():
    k = key("gen", 1)
    client.put(k, {"a": 1})
    gen_eq = {"gen": aerospike.POLICY_GEN_EQ}
    expect_error(ex.RecordGenerationError, 3, client.put, k, {"a": 2}, meta={"gen": 5}, policy=gen_eq)
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (1, {"a": 1}), "record after a refused generation-checked write")
    client.put(k, {"a": 3}, meta={"gen": 1}, policy=gen_eq)
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (2, {"a": 3}), "record after a generation-checked write")
    expect_error(ex.RecordGenerationError, 3, client.remove, k, meta={"gen": 1}, policy=gen_eq)
    gen_gt = {"gen": aerospike.POLICY_GEN_GT}
    expect_error(ex.RecordGenerationError, 3, client.put, k, {"a": 4}, meta={"gen": 2}, policy=gen_gt)
    client.put(k, {"a": 4}, meta={"gen": 3}, policy=gen_gt)
    eq(client.get(k)[1]["gen"], 3, "gen after a GEN_GT write")
    client.remove(k, meta={"gen": 3}, policy=gen_eq)
    check(missing(k), "record present after a generation-checked remove")


def t_get_missing():
    e = expect_error(ex.RecordNotFound, 2, client.get, key("get", "missing"))
    check(isinstance(e, ex.RecordError), "RecordNotFound is a RecordError")


def t_record_too_big():
    k = key("big", 1)
    client.put(k, {"small": 1})
    expect_error(ex.RecordTooBig, 13, client.put, k, {"blob": b"\x07" * (2 * 1024 * 1024)})
    expect_error(ex.RecordTooBig, 13, client.put, key("big", 2), {"blob": b"\x07" * (2 * 1024 * 1024)})
    # neither write took effect, and the connection still works
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (1, {"small": 1}), "record after a refused big write")
    check(missing(key("big", 2)), "a refused big write created a record")
    # a blob that fits is fine
    client.put(k, {"blob": b"\x07" * (512 * 1024)})
    eq(len(client.get(k)[2]["blob"]), 512 * 1024, "512 KiB blob")


def raw_put_reply_code(bin_name):
    """Sends a put of {bin_name: 1} as a raw AS_MSG frame; returns the reply's result code."""
    ns = NS.encode()
    set_name = b"rawbin"
    digest = bytes(range(20))  # any 20 bytes address a record
    fields = b""
    for ftype, data in ((0, ns), (1, set_name), (4, digest)):
        fields += struct.pack(">IB", len(data) + 1, ftype) + data
    name = bin_name.encode()
    value = struct.pack(">q", 1)
    ops = struct.pack(">IBBBB", 4 + len(name) + len(value), 2, 1, 0, len(name)) + name + value
    # header_sz, info1, info2 (WRITE), info3, info4, rc, gen, ttl, txn ttl, n_fields, n_ops
    header = struct.pack(">BBBBBBIIIHH", 22, 0, 1, 0, 0, 0, 0, 0, 1000, 3, 1)
    body = header + fields + ops
    frame = struct.pack(">Q", (2 << 56) | (3 << 48) | len(body)) + body
    with socket.create_connection((ARGS.host, ARGS.port), timeout=10) as s:
        s.sendall(frame)
        head = recv_exact(s, 8)
        (word,) = struct.unpack(">Q", head)
        eq(word >> 56, 2, "reply proto version")
        eq((word >> 48) & 0xFF, 3, "reply proto type")
        size = word & 0xFFFFFFFFFFFF
        check(22 <= size < 1 << 20, f"reply size {size}")
        reply = recv_exact(s, size)
        return reply[5]


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def t_bin_name():
    k = key("binname", 1)
    client.put(k, {"x" * 15: 1})
    eq(client.get(k)[2], {"x" * 15: 1}, "15-character bin name")
    # The client refuses a 16-character name itself (BinNameError, code 21) before
    # sending anything; the server's own answer is checked with a raw frame below.
    expect_error(ex.BinNameError, 21, client.put, k, {"y" * 16: 1})
    eq(raw_put_reply_code("y" * 16), 21, "server result code for a 16-character bin name")
    eq(raw_put_reply_code("y" * 15), 0, "server result code for a 15-character bin name (raw frame)")
    eq(client.get(k)[2], {"x" * 15: 1}, "record after a refused bin name")


def t_incompatible_type():
    k = key("incompat", 1)
    client.put(k, {"s": "text", "n": 1})
    expect_error(ex.BinIncompatibleType, 12, client.increment, k, "s", 1)
    expect_error(ex.BinIncompatibleType, 12, client.operate, k, [op.increment("s", 1)])
    expect_error(ex.BinIncompatibleType, 12, client.append, k, "n", "x")
    expect_error(ex.BinIncompatibleType, 12, client.operate, k, [op.increment("n", 1.5)])
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (1, {"s": "text", "n": 1}), "record after refused ops")


def t_ttl_expiry():
    k = key("ttl", "short")
    client.put(k, {"a": 1}, meta={"ttl": 1})
    _, meta, _ = client.get(k)
    check(meta["ttl"] <= 1, f"ttl right after put with ttl 1: {meta['ttl']}")
    k2 = key("ttl", "short-policy")
    client.put(k2, {"a": 1}, policy={"ttl": 1})
    check(client.get(k2)[1]["ttl"] <= 1, "ttl after put with policy ttl 1")
    time.sleep(3.0)
    check(missing(k), "record with ttl 1 still readable after 3 s")
    check(missing(k2), "record with policy ttl 1 still readable after 3 s")
    _, meta = client.exists(k)
    eq(meta, None, "exists() of an expired record")
    # the expired record is gone for writes as well: update-only fails, create succeeds
    expect_error(ex.RecordNotFound, 2, client.put, k, {"a": 2}, policy={"exists": aerospike.POLICY_EXISTS_UPDATE})
    client.put(k, {"a": 2}, policy={"exists": aerospike.POLICY_EXISTS_CREATE})
    _, meta, bins = client.get(k)
    eq((meta["gen"], bins), (1, {"a": 2}), "record re-created after expiry")


def t_ttl_special():
    k = key("ttl", "never")
    client.put(k, {"a": 1}, meta={"ttl": 50})
    check(45 <= client.get(k)[1]["ttl"] <= 50, "ttl 50")
    client.put(k, {"a": 2}, meta={"ttl": aerospike.TTL_NEVER_EXPIRE})
    eq(client.get(k)[1]["ttl"], NEVER, "ttl after TTL_NEVER_EXPIRE")

    k = key("ttl", "keep")
    client.put(k, {"a": 1}, meta={"ttl": 1000})
    client.put(k, {"a": 2}, meta={"ttl": aerospike.TTL_DONT_UPDATE})
    _, meta, bins = client.get(k)
    check(990 <= meta["ttl"] <= 1000, f"ttl after TTL_DONT_UPDATE: {meta['ttl']}")
    eq((meta["gen"], bins), (2, {"a": 2}), "record after TTL_DONT_UPDATE")
    # on a new record, TTL_DONT_UPDATE means the namespace default (never, here)
    k = key("ttl", "keep-new")
    client.put(k, {"a": 1}, meta={"ttl": aerospike.TTL_DONT_UPDATE})
    eq(client.get(k)[1]["ttl"], NEVER, "ttl of a new record written with TTL_DONT_UPDATE")
    # TTL_NAMESPACE_DEFAULT: default-ttl 0 means never
    k = key("ttl", "default")
    client.put(k, {"a": 1}, meta={"ttl": 60})
    client.put(k, {"a": 1}, meta={"ttl": aerospike.TTL_NAMESPACE_DEFAULT})
    eq(client.get(k)[1]["ttl"], NEVER, "ttl after TTL_NAMESPACE_DEFAULT")


def t_batch():
    hits = [key("batch", i) for i in range(10)]
    for i, k in enumerate(hits):
        client.put(k, {"i": i, "s": str(i)})
    misses = [key("batch", f"miss{i}") for i in range(4)]
    keys = [hits[0], misses[0], hits[1], hits[2], misses[1], misses[2]] + hits[3:] + [misses[3]]

    res = client.batch_read(keys)
    eq(len(res.batch_records), len(keys), "batch_read row count")
    for k, br in zip(keys, res.batch_records):
        eq(br.key[:3], k, "batch row key (rows come back in request order)")
        if k in hits:
            eq(br.result, 0, f"batch row {k} result")
            check(br.record is not None, f"batch row {k}: record None")
            _, meta, bins = br.record
            i = k[2]
            eq(bins, {"i": i, "s": str(i)}, f"batch row {k} bins")
            eq(meta["gen"], 1, f"batch row {k} gen")
        else:
            eq(br.result, 2, f"batch row {k} result (missing)")
            eq(br.record, None, f"batch row {k} record (missing)")

    # selected bins
    res = client.batch_read(hits[:3] + misses[:1], ["s"])
    for k, br in zip(hits[:3] + misses[:1], res.batch_records):
        if k in hits:
            eq(br.record[2], {"s": str(k[2])}, f"batch select row {k}")
        else:
            eq(br.result, 2, "batch select row of a missing key")

    # metadata only (bins=[] means no bins)
    res = client.batch_read(hits[:2] + misses[:1], [])
    eq([br.result for br in res.batch_records], [0, 0, 2], "batch exists results")
    eq(res.batch_records[0].record[1]["gen"], 1, "batch header read gen")

    # a batch of one key and of only misses
    eq([br.result for br in client.batch_read([misses[0]]).batch_records], [2], "batch of one missing key")
    eq(client.batch_read([hits[5]]).batch_records[0].record[2]["i"], 5, "batch of one key")


def t_truncate():
    for i in range(10):
        client.put(key("truncA", i), {"i": i})
        client.put(key("truncB", i), {"i": i})
    rc = client.truncate(NS, "truncA", 0)
    eq(rc, 0, "truncate return value")
    wait_until(lambda: all(missing(key("truncA", i)) for i in range(10)), 5.0, "truncated set's records gone")
    for i in range(10):
        eq(client.get(key("truncB", i))[2], {"i": i}, f"truncB record {i} after truncating truncA")
    eq(client.scan(NS, "truncA").results(), [], "scan of the truncated set")
    eq(len(client.scan(NS, "truncB").results()), 10, "scan of the other set")
    # new writes to the truncated set live on
    time.sleep(0.1)
    client.put(key("truncA", "new"), {"n": 1})
    eq(client.get(key("truncA", "new"))[2], {"n": 1}, "record written after truncate")


def info_value(command, text):
    """The value of an info reply. The client hands back the server's line with
    the echoed command stripped (e.g. '7.2.0.0\\n' for "build"); accept the
    unstripped form too."""
    check(isinstance(text, str), f"{command} reply is {type(text)}")
    prefix = command + "\t"
    if text.startswith(prefix):
        text = text[len(prefix):]
    check("\t" not in text, f"{command} reply {text!r} has a tab")
    return text.rstrip("\n")


def t_info():
    res = client.info_all("build")
    eq(len(res), 1, "info_all answers per node")
    for node, (err, text) in res.items():
        eq(err, None, f"info_all build error from {node}")
        value = info_value("build", text)
        check(re.fullmatch(r"\d+\.\d+\.\d+\.\d+\S*", value), f"build reply {text!r}")
    for node, (err, text) in client.info_all("namespaces").items():
        eq(err, None, "namespaces error")
        names = info_value("namespaces", text).split(";")
        check(NS in names, f"namespace {NS} not in {names}")
    for node, (err, text) in client.info_all("statistics").items():
        eq(err, None, "statistics error")
        pairs = [p for p in info_value("statistics", text).split(";") if p]
        check(pairs, "statistics is empty")
        for p in pairs:
            check(re.fullmatch(r"[^=;\t\n]+=[^;\t\n]*", p), f"statistics entry {p!r} is not name=value")
    # What an operator watches per namespace (the ticker's figures), as
    # integers: space, defrag, and durable deletes and their reclaim.
    for node, (err, text) in client.info_all(f"namespace/{NS}").items():
        eq(err, None, "namespace info error")
        pairs = dict(p.split("=", 1) for p in info_value(f"namespace/{NS}", text).split(";") if p)
        for name in ["objects", "tombstones", "device_used_bytes", "free_wblocks", "defrag_q",
                     "emergency_defrags", "tombstones_reclaimed", "tombstones_kept",
                     "tomb_raider_passes", "tomb_raider_aborts"]:
            check(re.fullmatch(r"\d+", pairs.get(name, "")), f"namespace/{NS} {name}={pairs.get(name)!r}")
    value = info_value("node", client.info_random_node("node"))
    check(re.fullmatch(r"[^\t\n,\[\]]+", value), f"node reply {value!r}")
    eq(value, client.get_node_names()[0]["node_name"], "node id")


CHECKS = [
    t_connect,
    t_scan,
    t_bin_types,
    t_select,
    t_exists,
    t_touch,
    t_operate,
    t_remove,
    t_durable_remove,
    t_exists_policies,
    t_generation,
    t_get_missing,
    t_record_too_big,
    t_bin_name,
    t_incompatible_type,
    t_ttl_expiry,
    t_ttl_special,
    t_batch,
    t_truncate,
    t_info,
]


def main():
    global client, ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--only", help="run only the checks whose names contain this")
    ARGS = p.parse_args()
    # The 19.x client warns about meta=..., meta["ttl"] and string append; they still work.
    warnings.simplefilter("ignore", DeprecationWarning)

    config = {
        "hosts": [(ARGS.host, ARGS.port)],
        "policies": {
            # bounded waits everywhere: 5 s per command
            "read": {"total_timeout": 5000},
            "write": {"total_timeout": 5000},
            "operate": {"total_timeout": 5000},
            "remove": {"total_timeout": 5000},
            "batch": {"total_timeout": 5000},
            "scan": {"total_timeout": 20000},
            "query": {"total_timeout": 20000},
            "info": {"timeout": 5000},
        },
        "connect_timeout": 5000,
    }
    try:
        client = aerospike.client(config).connect()
    except ex.AerospikeError as e:
        print(f"FAIL: cannot connect to {ARGS.host}:{ARGS.port}: {type(e).__name__} {e}", flush=True)
        return 2

    failures = []
    for t in CHECKS:
        if ARGS.only and ARGS.only not in t.__name__:
            continue
        start = time.monotonic()
        try:
            t()
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            failures.append(t.__name__)
            print(f"FAIL {t.__name__}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {t.__name__} ({time.monotonic() - start:.2f}s)", flush=True)
    client.close()
    if failures:
        print(f"FAILED {len(failures)} check(s): {', '.join(failures)}", flush=True)
        return 1
    print("all Python client checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
