"""Schema Registry support: the registry client ledgerflow's stages use (``client``) and a
local Apicurio Registry for the demo and the tests (``server``).

ledgerflow talks to any registry with the Confluent API (Confluent Schema Registry,
Apicurio's ``/apis/ccompat/v7``, Redpanda, Karapace) through confluent-kafka's
``SchemaRegistryClient``; this package is the typed boundary over it, as ``app/kafka``
is over the Kafka client. Framing, decoding and encoding live in
``app/codecs/registry.py``.
"""
