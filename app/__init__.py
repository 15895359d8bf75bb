"""ledgerflow: Kafka stream processing with exactly-once sinks."""

__version__ = "0.1.0"
