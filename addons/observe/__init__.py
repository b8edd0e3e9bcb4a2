"""
What happened, read from each flow's record once it is over: token usage read as the
response streams (token_usage.py), the access log (access_log.py), Prometheus metrics
(metrics.py), each developer's recent requests (recent_requests.py), the API dump (dump.py) and
the audit trail's OpenTelemetry spans (telemetry.py).

May import: addons.core, addons.rules. Never another concern, never `proxy/`.
"""
