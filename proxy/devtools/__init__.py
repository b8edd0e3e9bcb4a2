"""The demo and its local gateway: an install extra (`pip install aibridge-proxy[demo]`), used by
`./run demo` and the tests; the service never imports it."""
