// OpenAI's Node SDK against chatq's /v1 (tests/test_openai_node.py runs it): a background response
// polled to the end, a streamed one whose numbers run 0, 1, 2 … and whose deltas are its text, a
// Chat Completion, and an error raised as the SDK's own class. Prints one JSON line of what it saw.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.CHATQ_V1, apiKey: process.env.CHATQ_KEY, maxRetries: 0 });

let background = await client.responses.create({ model: "chatq-assistant", input: "Add task: node check", background: true });
while (background.status === "queued" || background.status === "in_progress") {
  await new Promise((resolve) => setTimeout(resolve, 100));
  background = await client.responses.retrieve(background.id);
}

const numbers = [];
let deltas = "";
let streamedId = null;
for await (const event of await client.responses.create({ model: "chatq-assistant", input: "show my tasks", stream: true })) {
  numbers.push(event.sequence_number);
  if (event.type === "response.created") streamedId = event.response.id;
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
const streamed = await client.responses.retrieve(streamedId);

const completion = await client.chat.completions.create({
  model: "chatq-assistant", messages: [{ role: "user", content: "what's on my list?" }],
});

let notFound = null;
try {
  await client.responses.retrieve("resp_00000000000000000000000000000000");
} catch (error) {
  notFound = error instanceof OpenAI.NotFoundError ? "NotFoundError" : String(error);
}

console.log(JSON.stringify({
  background: { status: background.status, text: background.output_text },
  streamed: { numbers, deltas, text: streamed.output_text },
  completion: completion.choices[0].message.content,
  notFound,
}));
