"""The certificate authority and trust bundles (plain `cryptography`, no mitmproxy)."""
