from mitmproxy import http

from addons.rules.routed_headers import routed_header_fields


def test_host_first_proxy_credentials_gone_added_headers_replace_the_clients():
    client = http.Headers(
        [
            (b"host", b"api.openai.com"),
            (b"Proxy-Authorization", b"Basic c2VjcmV0"),
            (b"Authorization", b"Bearer sk-1"),
            (b"proxy-connection", b"keep-alive"),
            (b"X-Request-Id", b"from-the-client"),
            (b"Accept", b"*/*"),
            (b"Accept", b"text/event-stream"),
        ]
    )
    fields = routed_header_fields(
        client.fields, "gw.example:8443", {"X-Request-Id": "ours", "X-Token": "t"}
    )
    assert fields == (
        (b"Host", b"gw.example:8443"),
        (b"Authorization", b"Bearer sk-1"),
        (b"Accept", b"*/*"),
        (b"Accept", b"text/event-stream"),  # repeated fields keep their order
        (b"X-Request-Id", b"ours"),
        (b"X-Token", b"t"),
    )
    headers = http.Headers(fields)
    assert headers.get_all("x-request-id") == ["ours"]
    assert "Proxy-Authorization" not in headers


def test_an_ipv6_gateway_keeps_its_brackets():
    assert routed_header_fields((), "[::1]:8443", {})[0] == (b"Host", b"[::1]:8443")
