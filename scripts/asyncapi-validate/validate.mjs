// Validates an AsyncAPI document with the official parser (@asyncapi/parser,
// the one the AsyncAPI CLI and Studio use): `node validate.mjs FILE`, or the
// document on stdin. Prints one JSON line per diagnostic (severity: error,
// warning, info, hint; code; path; message) and exits 1 when any is an
// error or the document did not parse.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

const source = process.argv[2] ? readFileSync(process.argv[2], 'utf8') : readFileSync(0, 'utf8');
const parser = new Parser();
const { document, diagnostics } = await parser.parse(source);
let errors = 0;
for (const d of diagnostics) {
  const severity = SEVERITY[d.severity] ?? String(d.severity);
  if (severity === 'error') errors += 1;
  console.log(JSON.stringify({ severity, code: d.code, path: d.path.join('.'), message: d.message }));
}
if (!document || errors > 0) {
  console.error(`invalid AsyncAPI document: ${errors} error(s)`);
  process.exit(1);
}
console.error(`valid AsyncAPI ${document.version()} document`);
