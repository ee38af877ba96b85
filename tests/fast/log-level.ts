// Preloaded (tests/fast/bunfig.toml, and the project's for `bun test`) before index.ts is imported: the app reads
// LOG_LEVEL once, at load, and here logs only errors, between the test results. Servers the suite starts are given
// an environment of their own, without it.
process.env.LOG_LEVEL = 'error'
