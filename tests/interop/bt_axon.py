"""A stock bittensor 10.5.0 Axon serving dtrain's synapses with canned
answers, for tests/bittensor_interop.rs (dtrain's dendrite queries it).

    bt_axon.py WALLET_DIR ALLOWED_SS58

prints {"ss58": ..., "port": ...} once serving; serves until stdin closes.
Only ALLOWED_SS58 may query it (the SDK's blacklist hook).
"""
import json, os, socket, sys
from typing import Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

import bittensor.utils.networking as networking

networking.get_external_ip = lambda: "127.0.0.1"  # no network

import bittensor as bt
from bittensor_wallet import Wallet

from dtrain_synapses import IsAlive, Train


def main():
    wallet = Wallet(name="axon", hotkey="hk", path=sys.argv[1])
    wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    allowed = sys.argv[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    # The SDK matches these signatures exactly (parameter named `synapse`).
    def isalive(synapse: IsAlive) -> IsAlive:
        syn = synapse
        syn.completion = "True"
        syn.epoch = 7
        return syn

    def train(synapse: Train) -> Train:
        syn = synapse
        syn.dataset_indices = [10, 11, 12]
        syn.gradient_sums = [0.25, 0.5]
        syn.loss = 3.5
        syn.batch_size = syn.gradient_test_index  # echoes a hashed request field
        return syn

    def bl_isalive(synapse: IsAlive) -> Tuple[bool, str]:
        return synapse.dendrite.hotkey != allowed, "not an allowed validator"

    def bl_train(synapse: Train) -> Tuple[bool, str]:
        return synapse.dendrite.hotkey != allowed, "not an allowed validator"

    axon = bt.Axon(wallet=wallet, ip="127.0.0.1", port=port, external_ip="127.0.0.1", external_port=port)
    axon.attach(forward_fn=isalive, blacklist_fn=bl_isalive).attach(forward_fn=train, blacklist_fn=bl_train)
    axon.start()
    print(json.dumps({"ss58": wallet.hotkey.ss58_address, "port": port}), flush=True)
    sys.stdin.read()
    axon.stop()


main()
