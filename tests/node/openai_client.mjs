// A Node client configured only by the environment: OPENAI_API_KEY, HTTPS_PROXY with
// NODE_USE_ENV_PROXY=1, and NODE_EXTRA_CA_CERTS. PROMPT, if set, is what the user types.
import OpenAI from "openai";

const client = new OpenAI();
const mode = process.argv[2] ?? "chat";
const messages = [{ role: "user", content: process.env.PROMPT ?? "hi" }];
if (mode === "stream") {
  const stream = await client.chat.completions.create({ model: "gpt-test", messages, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  console.log(JSON.stringify({ text }));
} else {
  const r = await client.chat.completions.create({ model: "gpt-test", messages });
  console.log(JSON.stringify({ text: r.choices[0].message.content }));
}
