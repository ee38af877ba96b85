// Mutation testing of index.ts against the fast tier (docs/testing.md): `bun run mutate -- --mutate
// index.ts:START-END` mutates one section's lines, and runs `bun run test:fast` once per mutant.
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  commandRunner: { command: 'bun run test:fast' },
  // Every line when no --mutate is given (hours on 2 cores): name a section's lines instead.
  mutate: ['index.ts'],
  // Two `bun run test:fast` at once: the machine's two cores.
  concurrency: 2,
  // A mutant that makes the tier hang (a loop that never ends, a request never answered) times out.
  timeoutMS: 20000,
  // What the fast tier does not read stays out of the sandbox (dist/ holds a 110 MB binary).
  ignorePatterns: ['dist', 'bench', 'docs', '.ci', '.bench-costs', '.stryker', 'tests/fixtures'],
  // Everything Stryker writes, under one ignored folder.
  tempDirName: '.stryker/tmp',
  incrementalFile: '.stryker/incremental.json',
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: '.stryker/mutation.json' },
  clearTextReporter: { allowColor: false, logTests: false },
}
