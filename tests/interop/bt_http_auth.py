"""btauth/1 with the Bittensor SDK 11.x (`bittensor.http_auth`), for
tests/bittensor_interop.rs.

    bt_http_auth.py address SEED_HEX
    bt_http_auth.py call SEED_HEX URL PATH BODY RECEIVER [stale|replay]
        -> {"status": ..., "body": ...} (for replay: also "first")
    bt_http_auth.py verify HEADERS_JSON BODY METHOD PATH SELF_SS58
        -> {"caller": ss58} or {"error": AuthError subclass}
"""
import json, sys, time, urllib.error, urllib.request

import bittensor as bt
from bittensor.sp_core import Keypair


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers={**headers, "Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return {"status": r.status, "body": r.read().decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode()}


def main():
    cmd = sys.argv[1]
    if cmd == "address":
        print(json.dumps({"ss58": Keypair.create_from_seed(bytes.fromhex(sys.argv[2].removeprefix("0x"))).ss58_address}))
    elif cmd == "call":
        kp = Keypair.create_from_seed(bytes.fromhex(sys.argv[2].removeprefix("0x")))
        url, path, body, receiver = sys.argv[3], sys.argv[4], sys.argv[5].encode(), sys.argv[6]
        case = sys.argv[7] if len(sys.argv) > 7 else ""
        nonce = time.time_ns() - 60 * 10**9 if case == "stale" else None
        headers = bt.http_auth.sign(kp, method="POST", path=path, body=body, receiver_ss58=receiver, nonce_ns=nonce)
        out = post(url + path, body, headers)
        if case == "replay":
            out = {"first": out["status"], **post(url + path, body, headers)}
        print(json.dumps(out))
    elif cmd == "verify":
        headers, body, method, path, me = json.loads(sys.argv[2]), sys.argv[3].encode(), sys.argv[4], sys.argv[5], sys.argv[6]
        try:
            caller = bt.http_auth.verify(headers, body, method=method, path=path, self_hotkey_ss58=me)
            print(json.dumps({"caller": caller.hotkey_ss58}))
        except bt.http_auth.AuthError as e:
            print(json.dumps({"error": type(e).__name__}))
    else:
        raise SystemExit(f"unknown command {cmd}")


main()
