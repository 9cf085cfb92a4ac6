#!/usr/bin/python3
"""Verify the DKIM signatures of a message with dkimpy (python3-dkim), an
implementation independent of ours, answering the key look-up from the
command line instead of the DNS.

usage: dkimpy_verify.py NAME RECORD [NAME RECORD ...] < message
Prints "pass" and exits 0 when every signature verifies, else prints
"fail" and exits 1.
"""
import sys

import dkim

records = dict(zip(sys.argv[1::2], sys.argv[2::2]))


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip(".").lower(), "").encode()


msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
ok = len(sigs) > 0 and all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(sigs)))
print("pass" if ok else "fail")
sys.exit(0 if ok else 1)
