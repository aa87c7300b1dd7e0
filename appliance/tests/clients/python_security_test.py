#!/usr/bin/env python3
"""Security checks of ospreyd through the official Python client (aerospike 19.x).

Run by appliance/tests/security.rs:

    python3 python_security_test.py --host 127.0.0.1 --port N --mode secure --admin-password PW
    python3 python_security_test.py --host 127.0.0.1 --port N --mode insecure

secure: the server has [security] enabled, an admin user "admin" with the given password
and session-ttl = 2 s. The script leaves two users behind, "pyuser" (read-write, password
"pyuser-pw") and "pyreader" (read, "pyreader-pw"), which the Rust test then logs in as.
insecure: security is off; a client that passes credentials must still connect and work.

Credentials go in the client config ('user'/'password'): the 19.x client sends no LOGIN
for connect(user, pw). One line per check; exit 1 if any check failed.
"""

import argparse
import socket
import struct
import sys
import time
import traceback

import aerospike
from aerospike import exception as ex

NS = "test"
ARGS = None


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def config(user=None, password=None):
    c = {
        "hosts": [(ARGS.host, ARGS.port)],
        "policies": {
            "read": {"total_timeout": 5000},
            "write": {"total_timeout": 5000},
            "info": {"timeout": 5000},
        },
        "connect_timeout": 5000,
    }
    if user is not None:
        c["user"] = user
        c["password"] = password
    return c


def connect(user=None, password=None):
    return aerospike.client(config(user, password)).connect()


def expect_code(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ex.AerospikeError as e:
        if e.code != code:
            raise AssertionError(f"expected code {code}, got {type(e).__name__} code {e.code}: {e.msg}") from e
        return e
    raise AssertionError(f"expected code {code}, but the call succeeded")


def raw_info_without_login(command):
    """An info request on a fresh socket that never logged in."""
    with socket.create_connection((ARGS.host, ARGS.port), timeout=10) as s:
        body = (command + "\n").encode()
        s.sendall(struct.pack(">Q", (2 << 56) | (1 << 48) | len(body)) + body)
        header = recv_exact(s, 8)
        size = struct.unpack(">Q", header)[0] & ((1 << 48) - 1)
        return recv_exact(s, size).decode()


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise AssertionError("server closed the socket")
        out += chunk
    return out


# --------------------------------------------------------------------------
# secure mode


def t_admin_connects_and_works():
    c = connect("admin", ARGS.admin_password)
    try:
        k = (NS, "pysec", "k1")
        c.put(k, {"a": 1})
        eq(c.get(k)[2], {"a": 1}, "record read back by admin")
        check(c.info_all("node"), "info as admin")
    finally:
        c.close()


def t_wrong_password_is_65():
    e = expect_code(65, connect, "admin", "not-the-password")
    check(isinstance(e, ex.InvalidCredential), f"exception class {type(e).__name__}")


def t_unknown_user_is_60():
    e = expect_code(60, connect, "nobody", "whatever")
    check(isinstance(e, ex.InvalidUser), f"exception class {type(e).__name__}")


def t_unauthenticated_info_is_80():
    eq(raw_info_without_login("node"), "node\tERROR:80:not authenticated\n", "info before LOGIN")


def t_admin_api_creates_users_and_roles():
    c = connect("admin", ARGS.admin_password)
    try:
        c.admin_create_user("pyuser", "pyuser-pw", ["read-write"])
        c.admin_create_user("pyreader", "pyreader-pw", ["read"])
        expect_code(61, c.admin_create_user, "pyuser", "x", ["read"])
        info = c.admin_query_user_info("pyuser")
        eq(sorted(info["roles"]), ["read-write"], "roles of pyuser")
        users = c.admin_query_users_info()
        check("pyreader" in users and "admin" in users, f"users listed: {sorted(users)}")
        c.admin_create_role("pyrole", [{"code": aerospike.PRIV_WRITE, "ns": NS, "set": "pyrole"}])
        privileges = c.admin_query_role("pyrole")  # the 19.x API: the privilege list
        eq(privileges, [{"code": aerospike.PRIV_WRITE, "ns": NS, "set": "pyrole"}], "pyrole")
        c.admin_create_user("pytemp", "pytemp-pw", ["pyrole"])
        t = connect("pytemp", "pytemp-pw")
        try:
            t.put((NS, "pyrole", 1), {"a": 1})
            expect_code(81, t.put, (NS, "other", 1), {"a": 1})
            expect_code(81, t.get, (NS, "pyrole", 1))
        finally:
            t.close()
        c.admin_drop_user("pytemp")
        c.admin_drop_role("pyrole")
        expect_code(60, connect, "pytemp", "pytemp-pw")
    finally:
        c.close()


def t_read_only_user_gets_81():
    r = connect("pyreader", "pyreader-pw")
    try:
        r.get((NS, "pysec", "k1"))
        expect_code(81, r.put, (NS, "pysec", "k2"), {"a": 2})
        expect_code(81, r.remove, (NS, "pysec", "k1"))
        expect_code(81, r.admin_create_user, "evil", "evil-pw", ["user-admin"])
        expect_code(81, r.admin_grant_roles, "pyreader", ["read-write"])
    finally:
        r.close()


def t_user_changes_own_password():
    c = connect("pyuser", "pyuser-pw")
    try:
        c.admin_change_password("pyuser", "pyuser-pw2")
        c.put((NS, "pysec", "k3"), {"a": 3})
    finally:
        c.close()
    expect_code(65, connect, "pyuser", "pyuser-pw")
    connect("pyuser", "pyuser-pw2").close()
    a = connect("admin", ARGS.admin_password)
    try:
        a.admin_set_password("pyuser", "pyuser-pw")
    finally:
        a.close()
    connect("pyuser", "pyuser-pw").close()


def t_operations_continue_after_session_expiry():
    c = connect("pyuser", "pyuser-pw")
    try:
        c.put((NS, "pysec", "ttl"), {"a": 1})
        time.sleep(3.2)  # session-ttl is 2 s
        c.put((NS, "pysec", "ttl"), {"a": 2})
        eq(c.get((NS, "pysec", "ttl"))[2], {"a": 2}, "record after expiry")
        check(c.info_all("node"), "info after expiry")
    finally:
        c.close()
    # A new client after the expiry logs in afresh.
    c = connect("pyuser", "pyuser-pw")
    try:
        eq(c.get((NS, "pysec", "ttl"))[2], {"a": 2}, "record from a new client")
    finally:
        c.close()


SECURE = [
    t_admin_connects_and_works,
    t_wrong_password_is_65,
    t_unknown_user_is_60,
    t_unauthenticated_info_is_80,
    t_admin_api_creates_users_and_roles,
    t_read_only_user_gets_81,
    t_user_changes_own_password,
    t_operations_continue_after_session_expiry,
]


# --------------------------------------------------------------------------
# insecure mode


def t_credentials_accepted_without_security():
    c = connect("someone", "anything")
    try:
        c.put((NS, "pyoff", 1), {"a": 1})
        eq(c.get((NS, "pyoff", 1))[2], {"a": 1}, "record with security off")
        expect_code(52, c.admin_create_user, "u", "p", ["read"])
    finally:
        c.close()


INSECURE = [t_credentials_accepted_without_security]


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["secure", "insecure"], required=True)
    p.add_argument("--admin-password", default="")
    ARGS = p.parse_args()
    failures = []
    for t in SECURE if ARGS.mode == "secure" else INSECURE:
        start = time.monotonic()
        try:
            t()
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            failures.append(t.__name__)
            print(f"FAIL {t.__name__}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {t.__name__} ({time.monotonic() - start:.2f}s)", flush=True)
    if failures:
        print(f"FAILED {len(failures)} check(s): {', '.join(failures)}", flush=True)
        return 1
    print("all Python security checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
