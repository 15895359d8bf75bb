"""The lake: a local S3 store (SeaweedFS) for the demo and the tests."""
