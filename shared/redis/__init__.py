"""Redis plumbing: clients and pools (`clients`), the multiplexed connection (`mux`), the
forms of REDIS_URL (`address`) and the embedded server of `spool dev` and the tests
(`embedded`). Keys are in `shared.keys`, scripts in `shared.scripts`."""
