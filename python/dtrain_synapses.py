"""dtrain's queries as Bittensor 10.x synapses, for Python validators and
miners that talk to dtrain nodes in the axon convention.

The fields are the reference network's (IsAlive, Train, AllReduce) plus
dtrain's `round` and `group` on AllReduce. Unlike the SDK's default (no
hashed fields), each class lists the request fields a miner acts on in
`required_hash_fields`, so the signed body hash covers them: a dtrain node
refuses a request whose body does not match its hash. Keep the order: the
hash is taken over the fields in this order.

    import bittensor as bt
    from dtrain_synapses import IsAlive, Train
    reply = await bt.Dendrite(wallet).call(axon_info, Train(gradient_test_index=3), deserialize=False)
"""
from typing import ClassVar, List, Optional

import bittensor as bt


class IsAlive(bt.Synapse):
    completion: Optional[str] = None
    epoch: Optional[int] = None

    required_hash_fields: ClassVar[tuple[str, ...]] = ()


class Train(bt.Synapse):
    gradient_test_index: Optional[int] = None
    model_name: Optional[str] = None
    dataset_indices: Optional[List[int]] = None
    gradient_sums: Optional[List[float]] = None
    loss: Optional[float] = None
    batch_size: Optional[int] = None

    required_hash_fields: ClassVar[tuple[str, ...]] = ("gradient_test_index", "model_name")


class AllReduce(bt.Synapse):
    learning_rate: Optional[float] = None
    next_chunk_timeout: Optional[float] = None
    min_group_size: Optional[int] = None
    request_timeout: Optional[float] = None
    min_matchmaking_time: Optional[float] = None
    all_reduce_timeout: Optional[float] = None
    completion: Optional[str] = None
    round: Optional[int] = None
    group: Optional[List[int]] = None

    required_hash_fields: ClassVar[tuple[str, ...]] = ("learning_rate", "round", "group", "all_reduce_timeout")
