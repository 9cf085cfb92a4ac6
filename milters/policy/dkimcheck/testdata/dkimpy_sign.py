#!/usr/bin/python3
"""Sign a message with dkimpy (python3-dkim), an implementation independent
of ours, and print the DKIM-Signature header field it makes.

usage: dkimpy_sign.py ALGORITHM KEY DOMAIN SELECTOR CANON < message
ALGORITHM is rsa-sha256 (KEY: a PEM file) or ed25519-sha256 (KEY: a file
holding the base64 of the 32-byte private seed, dkimpy's format); CANON is
e.g. relaxed/simple.
"""
import sys

import dkim

algo, keyfile, domain, selector, canon = sys.argv[1:6]
with open(keyfile, "rb") as f:
    key = f.read()
hc, bc = canon.encode().split(b"/")
msg = sys.stdin.buffer.read()
sig = dkim.sign(msg, selector.encode(), domain.encode(), key,
                canonicalize=(hc, bc), signature_algorithm=algo.encode(),
                include_headers=[b"from", b"to", b"subject", b"date"])
sys.stdout.buffer.write(sig)
