// The official Anthropic SDK for Node, configured only by the environment: ANTHROPIC_API_KEY,
// HTTPS_PROXY with NODE_USE_ENV_PROXY=1, and NODE_EXTRA_CA_CERTS. PROMPT, if set, is what the
// user types.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic();
const m = await client.messages.create({
  model: "claude-test",
  max_tokens: 64,
  messages: [{ role: "user", content: process.env.PROMPT ?? "hi" }],
});
console.log(JSON.stringify({ text: m.content[0].text }));
