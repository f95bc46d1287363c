"""Key operations with the Bittensor SDK, for tests/bittensor_interop.rs.

    bt_keys.py new-hotkey DIR           -> {"ss58": ..., "path": ...}  (a wallet hotkey file in DIR)
    bt_keys.py sign HOTKEY_FILE MESSAGE -> {"ss58": ..., "signature": "0x..."}
    bt_keys.py verify SS58 MESSAGE SIG  -> {"valid": true|false}
"""
import json, sys

from bittensor_wallet import Keypair, Wallet


def main():
    cmd = sys.argv[1]
    if cmd == "new-hotkey":
        w = Wallet(name="interop", hotkey="hk", path=sys.argv[2])
        w.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
        out = {"ss58": w.hotkey.ss58_address, "path": f"{sys.argv[2]}/interop/hotkeys/hk"}
    elif cmd == "sign":
        w_path = sys.argv[2]
        kp = Keypair.create_from_private_key(json.load(open(w_path))["privateKey"])
        out = {"ss58": kp.ss58_address, "signature": "0x" + kp.sign(sys.argv[3]).hex()}
    elif cmd == "verify":
        out = {"valid": bool(Keypair(ss58_address=sys.argv[2]).verify(sys.argv[3], sys.argv[4]))}
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
