"use strict";
// Renders /api/v1/openapi.json as a list of operations with their schemas.
document.addEventListener("DOMContentLoaded", async () => {
  const spec = await (await fetch("/api/v1/openapi.json")).json();
  const main = document.getElementById("operations");
  main.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = document.createElement("section");
      const title = document.createElement("h3");
      const verb = document.createElement("span");
      verb.className = `method ${method}`;
      verb.textContent = method.toUpperCase();
      const where = document.createElement("code");
      where.textContent = path;
      title.append(verb, where);
      const summary = document.createElement("p");
      summary.className = "summary";
      summary.textContent = `${op.summary}${op.security ? " · bearer token" : ""}`;
      const details = document.createElement("details");
      const label = document.createElement("summary");
      label.textContent = "parameters, body and responses";
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify({ parameters: op.parameters, requestBody: op.requestBody, responses: op.responses }, null, 2);
      details.append(label, pre);
      section.append(title, summary, details);
      main.append(section);
    }
  }
  const schemas = document.createElement("section");
  const heading = document.createElement("h2");
  heading.textContent = "Schemas";
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(spec.components.schemas, null, 2);
  schemas.append(heading, pre);
  main.append(schemas);
});
