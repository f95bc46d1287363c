"""A stock bittensor 10.5.0 Dendrite querying a dtrain node, for
tests/bittensor_interop.rs. Offline: the dendrite's external-IP lookup is
replaced, and the axon is on 127.0.0.1.

    bt_dendrite.py HOTKEY_FILE AXON_SS58 PORT CASE

prints one JSON object: what the dendrite got back for CASE (isalive,
train, tampered, stale, replayed).
"""
import asyncio, json, os, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

import bittensor.utils.networking as networking

networking.get_external_ip = lambda: "192.0.2.1"  # no network: a documentation address

import aiohttp
import bittensor as bt
from bittensor.core.chain_data import AxonInfo
from bittensor_wallet import Keypair

from dtrain_synapses import IsAlive, Train


def result(s):
    return {
        "status_code": s.dendrite.status_code,
        "status_message": s.dendrite.status_message,
        "axon_hotkey": s.axon.hotkey,
        "fields": {k: v for k, v in s.model_dump().items() if k not in ("axon", "dendrite")},
    }


async def raw(session, url, headers, body):
    async with session.post(url, headers=headers, data=body) as r:
        return {"status_code": r.status, "body": await r.text()}


async def main():
    hotkey_file, axon_ss58, port, case = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    kp = Keypair.create_from_private_key(json.load(open(hotkey_file))["privateKey"])
    d = bt.Dendrite(wallet=kp)
    axon = AxonInfo(version=0, ip="127.0.0.1", port=port, ip_type=4, hotkey=axon_ss58, coldkey=axon_ss58)
    if case == "isalive":
        out = result(await d.call(axon, IsAlive(), timeout=30, deserialize=False))
    elif case == "train":
        out = result(await d.call(axon, Train(gradient_test_index=3, model_name="dtrain"), timeout=120, deserialize=False))
    else:
        # Hand-made requests from the dendrite's own signed headers.
        syn = d.preprocess_synapse_for_request(axon, Train(gradient_test_index=3, model_name="dtrain"), 30)
        headers = syn.to_headers()
        body = json.dumps(syn.model_dump())
        url = f"http://127.0.0.1:{port}/Train"
        async with aiohttp.ClientSession() as session:
            if case == "tampered":
                tampered = json.loads(body)
                tampered["gradient_test_index"] = 4
                out = await raw(session, url, headers, json.dumps(tampered))
            elif case == "stale":
                old = d.preprocess_synapse_for_request(axon, Train(gradient_test_index=3, model_name="dtrain"), 1)
                old.dendrite.nonce = time.time_ns() - 3600 * 10**9
                msg = f"{old.dendrite.nonce}.{old.dendrite.hotkey}.{old.axon.hotkey}.{old.dendrite.uuid}.{old.body_hash}"
                old.dendrite.signature = "0x" + kp.sign(msg).hex()
                out = await raw(session, url, old.to_headers(), json.dumps(old.model_dump()))
            elif case == "replayed":
                first = await raw(session, url, headers, body)
                second = await raw(session, url, headers, body)
                out = {"first": first["status_code"], **second}
            else:
                raise SystemExit(f"unknown case {case}")
    await d.aclose_session()
    print(json.dumps(out))


asyncio.run(main())
