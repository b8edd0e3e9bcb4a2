# The "do it yourself" baseline: the ten lines an admin would write for stock mitmdump
# instead of using aibridge-proxy (run with -q, connection_strategy=lazy, streaming on).
import os

GATEWAY = os.environ["DIY_GATEWAY"] + "/api/v2/aibridge"
PROVIDERS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.githubcopilot.com": "copilot",
}


def requestheaders(flow):
    provider = PROVIDERS.get(flow.request.pretty_host)
    if provider:
        flow.request.url = f"{GATEWAY}/{provider}{flow.request.path}"
        flow.request.stream = True


def responseheaders(flow):
    flow.response.stream = True
