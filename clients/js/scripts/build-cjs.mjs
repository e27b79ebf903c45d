// Writes index.cjs, the CommonJS entry, from index.mjs (the one source): drops the `export`
// keywords and assigns the exported names to module.exports. `npm run build`; the test suite
// fails when index.cjs is out of date.

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

/** The CommonJS text for the ESM source `esm`. */
export function cjsSource(esm) {
  const names = [];
  const body = esm.replace(/^export (const|function) (\w+)/gm, (_, kind, name) => {
    names.push(name);
    return `${kind} ${name}`;
  });
  if (/^\s*(export|import)\b/m.test(body)) {
    throw new Error("index.mjs has an export or import form that build-cjs.mjs does not handle");
  }
  return (
    "// Generated from index.mjs by scripts/build-cjs.mjs (npm run build): edit index.mjs.\n" +
    '"use strict";\n' +
    body +
    `\nmodule.exports = { ${names.join(", ")} };\n`
  );
}

export const paths = { esm: `${root}index.mjs`, cjs: `${root}index.cjs` };

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(paths.cjs, cjsSource(readFileSync(paths.esm, "utf8")));
  console.log(`wrote ${paths.cjs}`);
}
