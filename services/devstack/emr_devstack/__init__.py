"""The local platform: FerretDB and every service as processes on loopback, for `make up` and tests."""
