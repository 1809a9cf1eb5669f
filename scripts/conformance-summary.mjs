// Summarizes an http-cache-tests results file by test kind and checks it
// against the list of required tests we believe are wrong.
//
//   node scripts/conformance-summary.mjs SUITE_DIR RESULTS.json [EXCEPTIONS.txt]
//
// A test's kind comes from its definition (tests/*.mjs; no kind = required).
// Exit status: 1 if a required test failed that is not in EXCEPTIONS.txt
// (one test id per line, '#' comments), 0 otherwise.
import fs from 'fs'
import path from 'path'

const [suiteDir, resultsFile, exceptionsFile] = process.argv.slice(2)
const { default: suites } = await import(path.resolve(suiteDir, 'tests', 'index.mjs'))
const { default: surrogate } = await import(path.resolve(suiteDir, 'tests', 'surrogate-control.mjs'))
suites.push(surrogate) // the CLI runs this suite too

const kinds = new Map()
for (const suite of suites) for (const t of suite.tests) kinds.set(t.id, t.kind || 'required')

const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
const exceptions = new Set(
  exceptionsFile && fs.existsSync(exceptionsFile)
    ? fs.readFileSync(exceptionsFile, 'utf8').split('\n').map(l => l.replace(/#.*/, '').trim()).filter(Boolean)
    : []
)

const tally = {}
const unexpected = []
const excused = []
for (const [id, result] of Object.entries(results)) {
  const kind = kinds.get(id) || 'required'
  tally[kind] ??= { passed: 0, run: 0 }
  tally[kind].run++
  if (result === true) tally[kind].passed++
  else if (kind === 'required') (exceptions.has(id) ? excused : unexpected).push(`${id}: ${JSON.stringify(result)}`)
}
for (const kind of ['required', 'optimal', 'check']) {
  const t = tally[kind] || { passed: 0, run: 0 }
  console.log(`conformance ${kind.padEnd(8)} ${t.passed}/${t.run} passed`)
}
for (const line of excused) console.log(`  excused (see README): ${line}`)
for (const line of unexpected) console.log(`  FAILED required: ${line}`)
process.exit(unexpected.length ? 1 : 0)
