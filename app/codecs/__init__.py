"""fastavro codecs for tokens, journal events and DLQ records; schemas live in ``schemas/``."""
